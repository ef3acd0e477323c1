"""Retrieval against every past landmark in key blocks, with a running top-k.

Scores are ``q . key / sqrt(D)`` in float32 with the strict causal mask ``e < c`` (method-spec
§3.5); the key blocks are visited in a ``fori_loop`` whose trip count covers only the chunks
written so far, so one compiled step serves every segment. Per query chunk the cost is
O(c * D): retrieval over a whole sequence is quadratic in its number of chunks, which is why
``Engine`` also offers the tail-exact mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

_NEG = -1e30


def chunk_weights(vals: Float[Array, "B n K"]) -> tuple[Float[Array, "B n K"], jax.Array]:
  """Softmax of the picked scores over valid picks only (0 where fewer than K are valid)."""
  valid = vals > _NEG / 2
  safe = jnp.where(valid, vals, 0.0)
  top = jnp.max(jnp.where(valid, safe, _NEG), axis=-1, keepdims=True)
  top = jnp.where(jnp.any(valid, axis=-1, keepdims=True), top, 0.0)
  e = jnp.where(valid, jnp.exp(safe - top), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(den > 0, den, 1.0), valid


def blocked_topk(
    q: Float[Array, "B n D"],
    keys: Float[Array, "B M D"],
    c0: Int[Array, ""],
    top_k: int,
    block: int,
) -> tuple[Int[Array, "B n K"], Float[Array, "B n K"]]:
  """Picks of query chunks ``c0 .. c0+n-1`` among key chunks ``e < c`` (idx, weights)."""
  b, n, d = q.shape
  m = keys.shape[1]
  if m % block:
    raise ValueError(f"blocked_topk: {m} keys is not a multiple of the block {block}")
  q = q.astype(jnp.float32)
  c = c0 + jnp.arange(n, dtype=jnp.int32)
  n_blocks = jnp.clip((c0 + n - 1 + block - 1) // block, 0, m // block)

  def body(j, carry):
    vals, idx = carry
    kb = jax.lax.dynamic_slice_in_dim(keys, j * block, block, axis=1).astype(jnp.float32)
    s = jnp.einsum("bnd,bed->bne", q, kb) * (d ** -0.5)
    e = j * block + jnp.arange(block, dtype=jnp.int32)
    s = jnp.where(e[None, None, :] < c[None, :, None], s, _NEG)
    all_v = jnp.concatenate([vals, s], -1)
    all_i = jnp.concatenate([idx, jnp.broadcast_to(e, (b, n, block))], -1)
    top_v, pos = jax.lax.top_k(all_v, top_k)
    return top_v, jnp.take_along_axis(all_i, pos, -1)

  init = (jnp.full((b, n, top_k), -jnp.inf, jnp.float32), jnp.zeros((b, n, top_k), jnp.int32))
  vals, idx = jax.lax.fori_loop(0, n_blocks, body, init)
  w, _ = chunk_weights(vals)
  return idx, w
