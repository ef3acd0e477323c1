"""The chunk memory at inference: landmark keys and chunk K/V, appended chunk by chunk.

Landmark keys ``[B, M, D]`` always live on the device (every retrieval scores all of them).
Chunk K/V ``[B, M, S, KH, Dh]`` live on the device, or with ``offload=True`` in host memory
(numpy; ``np.zeros`` pages are only committed when written), and only the picked chunks are
moved to the device. Capacity is fixed up front so every compiled step keeps its shapes;
``count`` chunks are valid. Memory is O(M * S * d): no per-layer KV for the whole context.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


@functools.partial(jax.jit, donate_argnums=0)
def _write(mem, seg, start):
  """Writes ``seg`` into ``mem`` at chunk ``start`` (buffer donated: updated in place)."""
  idx = (0, start) + (0,) * (mem.ndim - 2)
  return jax.lax.dynamic_update_slice(mem, seg.astype(mem.dtype), idx)


@jax.jit
def _gather(mem, idx):
  return jax.vmap(lambda m, i: m[i])(mem, idx)


class ChunkStore:
  """Fixed-capacity chunk memory: ``append`` whole chunks, ``gather`` picks, ``count`` valid."""

  def __init__(self, batch: int, capacity: int, chunk_size: int, kv_heads: int, head_dim: int,
               d_model: int, *, offload: bool = False, dtype=jnp.float32, key_block: int = 1):
    if capacity < 1:
      raise ValueError(f"ChunkStore capacity={capacity} must be >= 1 chunk")
    self.offload = offload
    self.key_block = key_block
    self.capacity = -(-capacity // key_block) * key_block  # whole blocks for blocked scoring
    self.count = 0
    shape = (batch, self.capacity, chunk_size, kv_heads, head_dim)
    self.lmk = jnp.zeros((batch, self.capacity, d_model), jnp.float32)
    if offload:
      self.k = np.zeros(shape, np.dtype(dtype))
      self.v = np.zeros(shape, np.dtype(dtype))
    else:
      self.k = jnp.zeros(shape, dtype)
      self.v = jnp.zeros(shape, dtype)

  def nbytes(self) -> int:
    """Bytes the valid part physically needs (landmark keys + chunk K/V)."""
    per_chunk = self.lmk.shape[0] * (self.lmk.shape[2] * 4 + 2 * int(np.prod(self.k.shape[2:])) *
                                     np.dtype(self.k.dtype).itemsize)
    return self.count * per_chunk

  def append(self, lmk: Float[Array, "B n D"], k: Float[Array, "B n S KH Dh"],
             v: Float[Array, "B n S KH Dh"], n_valid: int) -> None:
    """Appends the first ``n_valid`` of ``n`` chunks (the rest is padding, written but not counted;
    the capacity must hold ``count + n``)."""
    n = lmk.shape[1]
    if self.count + n > self.capacity:
      raise ValueError(f"ChunkStore is full: {self.count} + {n} chunks > capacity {self.capacity}")
    start = jnp.int32(self.count)
    self.lmk = _write(self.lmk, lmk, start)
    if self.offload:
      self.k[:, self.count:self.count + n_valid] = np.asarray(k[:, :n_valid])
      self.v[:, self.count:self.count + n_valid] = np.asarray(v[:, :n_valid])
    else:
      self.k = _write(self.k, k, start)
      self.v = _write(self.v, v, start)
    self.count += n_valid

  def gather(self, idx: Int[Array, "B n K"]):
    """The picked chunks' K and V ``[B, n, K, S, KH, Dh]`` on the device."""
    if self.offload:
      i = np.asarray(idx)
      b = np.arange(i.shape[0])[:, None, None]
      return jnp.asarray(self.k[b, i]), jnp.asarray(self.v[b, i])
    return _gather(self.k, idx), _gather(self.v, idx)
