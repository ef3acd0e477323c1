"""Causal chunk retrieval (method-spec §3.5).

The landmark of chunk c scores the landmarks of chunks e < c; Gumbel noise (training only)
perturbs the choice of the top-k; the chunk weights are the softmax of the noise-free scores of
the picks, over valid picks only. The retrieval made at chunk c's landmark serves chunk c + 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

_NEG = -1e30


def chunk_scores(q_lmk: Float[Array, "B C D"], keys: Float[Array, "B C D"]) -> Float[Array, "B C C"]:
  """Float32 scores of every landmark query against every landmark key, / sqrt(d_model)."""
  d = q_lmk.shape[-1]
  s = jnp.einsum("bcd,bed->bce", q_lmk.astype(jnp.float32), keys.astype(jnp.float32))
  return s * (d ** -0.5)


def causal_chunk_mask(num_chunks: int) -> np.ndarray:
  """mask[c, e] is True iff chunk c may retrieve chunk e, i.e. e < c (strict)."""
  return np.tril(np.ones((num_chunks, num_chunks), bool), k=-1)


def select_chunks(
    scores: Float[Array, "B C E"],
    mask: Bool[Array, "C E"],
    top_k: int,
    noise_key: jax.Array | None = None,
) -> tuple[Int[Array, "B C K"], Float[Array, "B C K"], Bool[Array, "B C K"]]:
  """Top-k picks (with Gumbel noise when ``noise_key`` is given) and their chunk weights.

  Returns (idx, w, valid) with K = min(top_k, E). Invalid picks (rows with fewer than K past
  chunks) get weight exactly 0, and all-invalid rows give zeros with finite gradients.
  """
  k = min(top_k, scores.shape[-1])
  mask = jnp.broadcast_to(mask, scores.shape)
  ranked = jnp.where(mask, scores, _NEG)
  if noise_key is not None:
    ranked = ranked + jax.random.gumbel(noise_key, scores.shape, jnp.float32)
  _, idx = jax.lax.top_k(ranked, k)
  picked = jnp.take_along_axis(scores, idx, axis=-1)
  valid = jnp.take_along_axis(mask, idx, axis=-1)
  safe = jnp.where(valid, picked, 0.0)
  top = jnp.max(jnp.where(valid, safe, _NEG), axis=-1, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(jnp.any(valid, axis=-1, keepdims=True), top, 0.0))
  e = jnp.where(valid, jnp.exp(safe - top), 0.0)
  den = jnp.sum(e, axis=-1, keepdims=True)
  w = e / jnp.where(den > 0, den, 1.0)
  return idx.astype(jnp.int32), w, valid


def serve_next_chunk(idx: Int[Array, "B C K"], w: Float[Array, "B C K"]):
  """The off-by-one shift: the picks made at landmark c are used by chunk c + 1."""
  return idx[:, :-1], w[:, :-1]
