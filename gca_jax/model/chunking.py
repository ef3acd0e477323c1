"""Chunk layout: landmark insertion and removal, and the label layout.

A raw sequence of T tokens is right-padded to C = ceil(T / S) whole chunks of S tokens; each
chunk gets its landmark appended, giving C * (S + 1) positions. Position c*(S+1) + S is the
landmark of chunk c.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

IGNORE = -100


def num_chunks(length: int, chunk_size: int) -> int:
  return -(-length // chunk_size)


def insert_landmarks(tokens: Int[Array, "B T"], chunk_size: int, landmark_id: int, pad_id: int) -> Int[Array, "B L"]:
  """Pads to whole chunks with ``pad_id`` and appends ``landmark_id`` to every chunk; negative
  ids (masked positions) become ``pad_id``. numpy in, numpy out (the serving engine lays out
  million-token inputs on the host); jax arrays otherwise."""
  xp = np if isinstance(tokens, np.ndarray) else jnp
  b, t = tokens.shape
  c = num_chunks(t, chunk_size)
  x = xp.where(tokens < 0, pad_id, tokens).astype(tokens.dtype)
  x = xp.pad(x, ((0, 0), (0, c * chunk_size - t)), constant_values=pad_id).reshape(b, c, chunk_size)
  lmk = xp.full((b, c, 1), landmark_id, dtype=x.dtype)
  return xp.concatenate([x, lmk], axis=2).reshape(b, c * (chunk_size + 1))


def raw_to_layout(t, chunk_size: int):
  """Landmark-layout position of raw token ``t``."""
  return (np.asarray(t) // chunk_size) * (chunk_size + 1) + np.asarray(t) % chunk_size


def remove_landmarks(x, chunk_size: int, length: int | None = None):
  """Drops landmark positions from axis 1 (and the chunk padding when ``length`` is given)."""
  b, n = x.shape[:2]
  p = chunk_size + 1
  y = x.reshape(b, n // p, p, *x.shape[2:])[:, :, :chunk_size]
  y = y.reshape(b, (n // p) * chunk_size, *x.shape[2:])
  return y if length is None else y[:, :length]


def landmark_labels(tokens: Int[Array, "B T"], chunk_size: int) -> Int[Array, "B L"]:
  """Targets in the landmark layout: real token t predicts raw token t+1; landmarks, padding
  and the last real token are IGNORE."""
  b, t = tokens.shape
  target = jnp.concatenate([tokens[:, 1:], jnp.full((b, 1), IGNORE, tokens.dtype)], axis=1)
  return insert_landmarks(target, chunk_size, IGNORE, IGNORE)
