"""Blocked, fused cross-entropy of the tied LM head: [B, T, V] logits never exist whole.

The head's logits are made ``block`` positions at a time. Under differentiation the forward
pass also forms that block's logit gradient ``w * (softmax - onehot)`` and immediately
contracts it into the gradients of the hidden states and of the table, so the backward pass
only scales them by the incoming cotangent: the same three head matmuls as plain autodiff, no
recomputation, and float32 memory of one [B, block, V] block instead of the whole sequence.
The blocks are a static Python loop (not a scan) so XLA's cost analysis counts every one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from gca_jax.logical import constrain


def _blocks(length: int, block: int):
  block = block or length
  return [(s, min(s + block, length)) for s in range(0, length, block)]


def _forward(h, table, targets, weights, block: int, grads: bool):
  """(weighted nll sum, nll [B, T]) and, with ``grads``, d(sum)/dh and d(sum)/dtable."""
  tab = table.astype(h.dtype)
  total, nlls, dhs = jnp.zeros((), jnp.float32), [], []
  dtab = jnp.zeros(table.shape, jnp.float32)
  for s, e in _blocks(h.shape[1], block):
    hb, tb, wb = h[:, s:e], targets[:, s:e], weights[:, s:e].astype(jnp.float32)
    logits = constrain(jnp.einsum("btd,vd->btv", hb, tab, preferred_element_type=jnp.float32),
                       "batch", None, "vocab")
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, tb[..., None], -1)[..., 0]
    total, nlls = total + jnp.sum(wb * nll), nlls + [nll]
    if grads:
      hot = jnp.arange(logits.shape[-1], dtype=tb.dtype) == tb[..., None]
      dlogits = ((jnp.exp(logits - lse[..., None]) - hot) * wb[..., None]).astype(h.dtype)
      dhs.append(jnp.einsum("btv,vd->btd", dlogits, tab, preferred_element_type=jnp.float32).astype(h.dtype))
      dtab = dtab + jnp.einsum("btv,btd->vd", dlogits, hb, preferred_element_type=jnp.float32)
  nll = jnp.concatenate(nlls, axis=1)
  return (total, nll), (jnp.concatenate(dhs, axis=1) if grads else None, dtab, nll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(h, table, targets, weights, block):
  return _forward(h, table, targets, weights, block, grads=False)[0]


def _fused_fwd(h, table, targets, weights, block):
  out, (dh, dtab, nll) = _forward(h, table, targets, weights, block, grads=True)
  return out, (dh, dtab.astype(table.dtype), nll)


def _fused_bwd(block, res, cotangents):
  dh, dtab, nll = res
  g = cotangents[0]  # the per-token nll output is returned under stop_gradient: no cotangent
  return ((g * dh.astype(jnp.float32)).astype(dh.dtype), (g * dtab.astype(jnp.float32)).astype(dtab.dtype),
          None, g * nll)


_fused.defvjp(_fused_fwd, _fused_bwd)


def blocked_cross_entropy(
    h: Float[Array, "B T D"],
    table: Float[Array, "V D"],
    targets: Int[Array, "B T"],
    weights: Float[Array, "B T"],
    *,
    block: int = 0,
) -> tuple[Float[Array, ""], Float[Array, "B T"]]:
  """``(sum(weights * nll), nll)`` of logits ``h @ table.T`` (float32) against ``targets``,
  ``block`` positions at a time (0: one block). ``h`` is the head's input (final-normed);
  gradients flow to ``h``, ``table`` and ``weights`` through the sum only (``nll`` is for
  metrics and carries no gradient)."""
  if targets.shape != h.shape[:2] or weights.shape != h.shape[:2]:
    raise ValueError(f"blocked_cross_entropy: targets {targets.shape} and weights {weights.shape} "
                     f"must be the [batch, length] of h {h.shape}")
  if block < 0:
    raise ValueError(f"blocked_cross_entropy: block={block} must be >= 0 (0: one block)")
  total, nll = _fused(h, table, targets, weights, block)
  return total, jax.lax.stop_gradient(nll)
