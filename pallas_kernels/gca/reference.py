"""Pure-jnp Grouped Cross Attention: the oracle every kernel is tested against.

For each query chunk (b, c) and each of its K picks i, the queries attend to the S keys of
memory chunk ``idx[b, c, i]`` with a per-chunk softmax; the K results are mixed with the chunk
weights ``w[b, c, i]`` (shared by all heads and query positions):

    out[b,c,q,h] = sum_i w[b,c,i] * sum_s p_i[q,s] * v_mem[b, idx[b,c,i], s, h // G]
    p_i = softmax_s(q . k_mem[b, idx[b,c,i], s, h // G] / sqrt(D))      (G = H / KH)

``softmax_one`` adds an implicit zero logit to every per-chunk softmax (denominator
``1 + sum exp``): exactly what the authors' zeroed landmark key/value slot gives for chunk 63,
computed here without a physical slot. Autodiff gives every gradient of docs/method.md, GCA gradients,
including dW, and the gather's transpose scatter-adds dk/dv over repeated picks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def gather_chunks(mem: Float[Array, "B M S KH D"], idx: Int[Array, "B C K"]) -> Float[Array, "B C K S KH D"]:
  """Picks memory chunks per (batch, query chunk); differentiable (scatter-add transpose)."""
  return jax.vmap(lambda m, i: m[i])(mem, idx)


def gca_reference(
    q: Float[Array, "B C Q H D"],
    k_mem: Float[Array, "B M S KH D"],
    v_mem: Float[Array, "B M S KH D"],
    idx: Int[Array, "B C K"],
    w: Float[Array, "B C K"],
    *,
    softmax_one: bool = False,
) -> Float[Array, "B C Q H D"]:
  """Grouped cross attention with materialised gathered chunks (float32 softmax)."""
  b, c, nq, h, d = q.shape
  kh = k_mem.shape[3]
  g = h // kh
  k = gather_chunks(k_mem, idx)  # B C K S KH D
  v = gather_chunks(v_mem, idx)
  qg = q.reshape(b, c, nq, kh, g, d)
  logits = jnp.einsum("bcqhgd,bckshd->bchgkqs", qg, k, preferred_element_type=jnp.float32)
  logits = logits * (d ** -0.5)
  m = jnp.max(logits, axis=-1, keepdims=True)
  if softmax_one:
    m = jnp.maximum(m, 0.0)  # the implicit zero logit takes part in the max: no overflow
  e = jnp.exp(logits - m)
  denom = jnp.sum(e, axis=-1, keepdims=True)
  if softmax_one:
    denom = denom + jnp.exp(-m)
  p = e / denom
  o = jnp.einsum("bchgkqs,bckshd->bchgkqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  out = jnp.einsum("bchgkqd,bck->bcqhgd", o, w.astype(jnp.float32))
  return out.reshape(b, c, nq, h, d).astype(q.dtype)
