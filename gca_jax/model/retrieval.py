"""Causal chunk retrieval: the one implementation training and serving share.

The landmark query of chunk c scores the landmark keys of chunks e < c (``q . k / sqrt(D)`` in
float32); Gumbel noise (training only) perturbs which top-k are picked; the chunk weights are
the softmax of the noise-free scores of the picks, over valid picks only (rows with fewer than
K past chunks give their missing picks weight exactly 0). The picks made at chunk c's landmark
serve chunk c + 1 (``serve_next_chunk``).

Selection carries no gradient; the weights are recomputed from the picked keys, so the
retriever learns through them alone. Scoring runs over all keys at once (``block`` 0) or key
block by key block with a running top-k (memory O(n * block), and when ``c0`` is traced the trip
count covers only the chunks written so far, so one compiled serving step fits every segment).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from gca_jax.model.layers import MASK_VALUE


def chunk_scores(q: Float[Array, "B n D"], keys: Float[Array, "B M D"]) -> Float[Array, "B n M"]:
  """Float32 scores of every landmark query against every landmark key, / sqrt(D)."""
  d = q.shape[-1]
  return jnp.einsum("bnd,bed->bne", q.astype(jnp.float32), keys.astype(jnp.float32)) * (d ** -0.5)


def causal_chunk_mask(num_chunks: int) -> np.ndarray:
  """mask[c, e] is True iff chunk c may retrieve chunk e, i.e. e < c (strict)."""
  return np.tril(np.ones((num_chunks, num_chunks), bool), k=-1)


def _ranked(q, keys, e0, c, noise):
  """Scores of a key block starting at chunk ``e0``, masked to e < c, plus ``noise``."""
  e = e0 + jnp.arange(keys.shape[1], dtype=jnp.int32)
  s = jnp.where(e[None, None, :] < c[None, :, None], chunk_scores(q, keys), MASK_VALUE)
  return s if noise is None else s + noise


def top_chunks(
    q: Float[Array, "B n D"],
    keys: Float[Array, "B M D"],
    top_k: int,
    *,
    c0: int | Int[Array, ""] = 0,
    block: int = 0,
    noise_key: jax.Array | None = None,
) -> tuple[Int[Array, "B n K"], Bool[Array, "B n K"]]:
  """The K = min(top_k, M) picks of query chunks c0 .. c0+n-1 among key chunks e < c, and
  which of them are valid (a row with fewer than K past chunks has invalid picks)."""
  b, n, _ = q.shape
  m = keys.shape[1]
  k = min(top_k, m)
  q, keys = jax.lax.stop_gradient(q), jax.lax.stop_gradient(keys)
  c = c0 + jnp.arange(n, dtype=jnp.int32)
  if not block or block >= m:
    noise = None if noise_key is None else jax.random.gumbel(noise_key, (b, n, m), jnp.float32)
    vals, idx = jax.lax.top_k(_ranked(q, keys, 0, c, noise), k)
    return idx.astype(jnp.int32), vals > MASK_VALUE / 2
  if m % block:  # whole blocks; the padding keys are masked as e >= M
    keys = jnp.pad(keys, ((0, 0), (0, block - m % block), (0, 0)))
    c = jnp.minimum(c, m)
  n_blocks = (c0 + n - 1 + block - 1) // block  # blocks holding some e < c0 + n - 1
  n_blocks = min(n_blocks, keys.shape[1] // block) if isinstance(c0, int) else jnp.clip(
      n_blocks, 0, keys.shape[1] // block)

  def body(j, carry):
    vals, idx = carry
    kb = jax.lax.dynamic_slice_in_dim(keys, j * block, block, axis=1)
    noise = None if noise_key is None else jax.random.gumbel(
        jax.random.fold_in(noise_key, j), (b, n, block), jnp.float32)
    all_v = jnp.concatenate([vals, _ranked(q, kb, j * block, c, noise)], -1)
    all_i = jnp.concatenate([idx, jnp.broadcast_to(j * block + jnp.arange(block, dtype=jnp.int32),
                                                   (b, n, block))], -1)
    top_v, pos = jax.lax.top_k(all_v, k)
    return top_v, jnp.take_along_axis(all_i, pos, -1)

  init = (jnp.full((b, n, k), -jnp.inf, jnp.float32), jnp.zeros((b, n, k), jnp.int32))
  vals, idx = jax.lax.fori_loop(0, n_blocks, body, init)
  return idx, vals > MASK_VALUE / 2


def chunk_weights(q: Float[Array, "B n D"], keys: Float[Array, "B M D"], idx: Int[Array, "B n K"],
                  valid: Bool[Array, "B n K"]) -> Float[Array, "B n K"]:
  """Softmax of the picks' noise-free scores over valid picks only (0 for invalid ones);
  differentiable in ``q`` and ``keys``, with finite gradients for all-invalid rows."""
  picked_keys = jax.vmap(lambda kb, ib: kb[ib])(keys, idx)  # B, n, K, D
  d = q.shape[-1]
  picked = jnp.einsum("bnd,bnkd->bnk", q.astype(jnp.float32),
                      picked_keys.astype(jnp.float32)) * (d ** -0.5)
  safe = jnp.where(valid, picked, 0.0)
  top = jnp.max(jnp.where(valid, safe, MASK_VALUE), axis=-1, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(jnp.any(valid, axis=-1, keepdims=True), top, 0.0))
  e = jnp.where(valid, jnp.exp(safe - top), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  return e / jnp.where(den > 0, den, 1.0)


def select_chunks(q, keys, top_k: int, *, c0=0, block: int = 0, noise_key=None):
  """``top_chunks`` then ``chunk_weights``: (idx int32, w float32, valid), each [B, n, K]."""
  idx, valid = top_chunks(q, keys, top_k, c0=c0, block=block, noise_key=noise_key)
  return idx, chunk_weights(q, keys, idx, valid), valid


def serve_next_chunk(idx: Int[Array, "B C K"], w: Float[Array, "B C K"]):
  """The off-by-one shift: the picks made at landmark c are used by chunk c + 1."""
  return idx[:, :-1], w[:, :-1]
