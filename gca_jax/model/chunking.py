"""Chunk layout: landmark insertion and removal, and the label layout (method-spec §2).

A raw sequence of T tokens is right-padded to C = ceil(T / S) whole chunks of S tokens; each
chunk gets its landmark appended, giving C * (S + 1) positions. Position c*(S+1) + S is the
landmark of chunk c.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Int

IGNORE = -100


def num_chunks(length: int, chunk_size: int) -> int:
  return -(-length // chunk_size)


def insert_landmarks(tokens: Int[Array, "B T"], chunk_size: int, landmark_id: int, pad_id: int) -> Int[Array, "B L"]:
  """Pads to whole chunks with ``pad_id`` and appends ``landmark_id`` to every chunk."""
  b, t = tokens.shape
  c = num_chunks(t, chunk_size)
  x = jnp.pad(tokens, ((0, 0), (0, c * chunk_size - t)), constant_values=pad_id)
  x = x.reshape(b, c, chunk_size)
  lmk = jnp.full((b, c, 1), landmark_id, dtype=x.dtype)
  return jnp.concatenate([x, lmk], axis=2).reshape(b, c * (chunk_size + 1))


def remove_landmarks(x, chunk_size: int, length: int | None = None):
  """Drops landmark positions from axis 1 (and the chunk padding when ``length`` is given)."""
  b, n = x.shape[:2]
  p = chunk_size + 1
  y = x.reshape(b, n // p, p, *x.shape[2:])[:, :, :chunk_size]
  y = y.reshape(b, (n // p) * chunk_size, *x.shape[2:])
  return y if length is None else y[:, :length]


def landmark_labels(tokens: Int[Array, "B T"], chunk_size: int) -> Int[Array, "B L"]:
  """Targets in the landmark layout: real token t predicts raw token t+1; landmarks, padding
  and the last real token are IGNORE (method-spec §2.2)."""
  b, t = tokens.shape
  target = jnp.concatenate([tokens[:, 1:], jnp.full((b, 1), IGNORE, tokens.dtype)], axis=1)
  return insert_landmarks(target, chunk_size, IGNORE, IGNORE)
