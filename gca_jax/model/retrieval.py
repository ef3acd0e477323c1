"""Causal chunk retrieval: the one implementation training and serving share.

The landmark query of chunk c scores the landmark keys of chunks e < c (``q . k / sqrt(D)`` in
float32); Gumbel noise (training only) perturbs which top-k are picked; the chunk weights are
the softmax of the noise-free scores of the picks, over valid picks only (rows with fewer than
K past chunks give their missing picks weight exactly 0). The picks made at chunk c's landmark
serve chunk c + 1 (``serve_next_chunk``).

Selection carries no gradient; the weights are recomputed from the picked keys, so the
retriever learns through them alone. Scoring runs over all keys at once (``block`` 0) or in
blocks: query chunks in blocks of ``block``, each against only the key blocks holding chunks
before it (the causal lower triangle, about half the dense work), with a running top-k, so
memory is O(n * block) and never O(n * M). With a traced ``c0`` the trip counts cover only the
chunks written so far, so one compiled serving step fits every segment.

The Gumbel noise of the pair (query chunk c, key chunk e) in batch row b is a pure function of
``(noise_key, b, c, e)`` (``gumbel_noise``: a counter-based integer hash, no threefry stream per
score), so every blocking draws the same noise and picks the same chunks as the dense path, and
a resumed run given the same key picks the same chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from gca_jax.model.layers import MASK_VALUE

# Odd multipliers of the counter hash (a golden-ratio one and the two of the murmur3 finaliser).
_MUL_B, _MUL_C, _MUL_E = 0x9E3779B9, 0x7FEB352D, 0x846CA68B
_FMIX = (0x85EBCA6B, 0xC2B2AE35)


def chunk_scores(q: Float[Array, "B n D"], keys: Float[Array, "B M D"]) -> Float[Array, "B n M"]:
  """Float32 scores of every landmark query against every landmark key, / sqrt(D)."""
  d = q.shape[-1]
  return jnp.einsum("bnd,bed->bne", q.astype(jnp.float32), keys.astype(jnp.float32)) * (d ** -0.5)


def causal_chunk_mask(num_chunks: int) -> np.ndarray:
  """mask[c, e] is True iff chunk c may retrieve chunk e, i.e. e < c (strict)."""
  return np.tril(np.ones((num_chunks, num_chunks), bool), k=-1)


def _fmix(x):
  """Avalanche of uint32 words (the murmur3 finaliser): every output bit depends on every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_FMIX[0])
  x = x ^ (x >> 13)
  x = x * jnp.uint32(_FMIX[1])
  return x ^ (x >> 16)


def noise_seed(noise_key: jax.Array) -> Int[Array, "2"]:
  """Two uint32 seed words drawn from a JAX PRNG key (raw or typed)."""
  return jax.random.bits(noise_key, (2,), jnp.uint32)


def gumbel_noise(seed, b, c, e) -> Float[Array, "..."]:
  """Standard Gumbel noise of (batch row ``b``, query chunk ``c``, key chunk ``e``), broadcast
  together; a pure function of the indices, so any blocking of the score matrix agrees.

  A row hash of (seed, b, c) is mixed with the key index: about ten integer operations and two
  logs per score. Uniforms are the top 24 bits, centred: u in (0, 1), never 0 or 1.
  """
  u32 = lambda x: jnp.asarray(x).astype(jnp.uint32)
  row = _fmix(u32(b) * jnp.uint32(_MUL_B) ^ seed[0])
  row = _fmix(row ^ (u32(c) * jnp.uint32(_MUL_C) + seed[1]))
  bits = _fmix(row ^ (u32(e) * jnp.uint32(_MUL_E)))
  u = ((bits >> 8).astype(jnp.float32) + 0.5) * (2.0 ** -24)
  return -jnp.log(-jnp.log(u))


def _ranked(qs, keys, c, e0, m, seed):
  """Noisy scores of query chunks ``c`` [n] (``qs`` already scaled by 1/sqrt(D)) against the
  key block starting at chunk ``e0``; entries with e >= c or e >= m are MASK_VALUE."""
  e = e0 + jnp.arange(keys.shape[1], dtype=jnp.int32)
  s = jnp.einsum("bnd,bed->bne", qs, keys)
  if seed is not None:
    s = s + gumbel_noise(seed, jnp.arange(qs.shape[0])[:, None, None], c[None, :, None], e[None, None, :])
  ok = (e[None, :] < c[:, None]) & (e[None, :] < m)
  return jnp.where(ok[None], s, MASK_VALUE)


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
  which of them are valid (a row with fewer than K past chunks has invalid picks).

  ``block`` 0 (or >= M) scores everything at once; otherwise query blocks of ``block`` chunks
  each loop over the key blocks before their last chunk with a running top-k."""
  b, n, d = q.shape
  m = keys.shape[1]
  k = min(top_k, m)
  qs = jax.lax.stop_gradient(q).astype(jnp.float32) * (d ** -0.5)
  keys = jax.lax.stop_gradient(keys).astype(jnp.float32)
  seed = None if noise_key is None else noise_seed(noise_key)
  if not block or block >= m:
    vals, idx = jax.lax.top_k(_ranked(qs, keys, c0 + jnp.arange(n, dtype=jnp.int32), 0, m, seed), k)
    return idx.astype(jnp.int32), vals > MASK_VALUE / 2
  bq = min(block, n)
  nq, nk = -(-n // bq), -(-m // block)
  keys = jnp.pad(keys, ((0, 0), (0, nk * block - m), (0, 0)))
  qblocks = jnp.pad(qs, ((0, 0), (0, nq * bq - n), (0, 0))).reshape(b, nq, bq, d)

  def one_query_block(args):
    qb, i = args
    first = c0 + i * bq
    c = first + jnp.arange(bq, dtype=jnp.int32)
    trips = jnp.clip((first + bq - 1 + block - 1) // block, 0, nk)  # key blocks with some e < c

    def body(j, carry):
      vals, idx = carry
      kb = jax.lax.dynamic_slice_in_dim(keys, j * block, block, axis=1)
      all_v = jnp.concatenate([vals, _ranked(qb, kb, c, j * block, m, seed)], -1)
      ids = j * block + jnp.arange(block, dtype=jnp.int32)
      all_i = jnp.concatenate([idx, jnp.broadcast_to(ids, (b, bq, block))], -1)
      top_v, pos = jax.lax.top_k(all_v, k)
      return top_v, jnp.take_along_axis(all_i, pos, -1)

    init = (jnp.full((b, bq, k), -jnp.inf, jnp.float32), jnp.zeros((b, bq, k), jnp.int32))
    return jax.lax.fori_loop(0, trips, body, init)

  vals, idx = jax.lax.map(one_query_block, (jnp.moveaxis(qblocks, 1, 0), jnp.arange(nq, dtype=jnp.int32)))
  vals, idx = (jnp.moveaxis(x, 0, 1).reshape(b, nq * bq, k)[:, :n] for x in (vals, idx))
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
