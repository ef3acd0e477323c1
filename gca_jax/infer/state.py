"""The inference state carried between segments and decoding steps."""

from __future__ import annotations

import dataclasses
from typing import Any

from gca_jax.infer.memory import ChunkStore


@dataclasses.dataclass
class InferState:
  """Everything a continued run needs; O(window) per layer plus the chunk memory.

  ``pos`` counts positions of the landmark layout processed so far (tokens for baselines);
  ``lower``/``upper`` hold each layer's rolling (k, v) cache of the last ``window`` positions;
  ``picks[g]`` = (idx, w) [B, K] made at the last landmark by group g, serving the next chunk;
  ``chunk_buf`` [B, P, D] buffers the current chunk's lower-layer states while decoding;
  ``gathered[g]`` = the current chunk's picked (k, v) [B, 1, K, S, KH, Dh] (decode only).
  """

  batch: int
  pos: int
  lower: tuple
  upper: tuple
  memory: ChunkStore | None
  picks: list
  chunk_buf: Any = None
  gathered: list | None = None
  gathered_chunk: int = -1

  def cache_positions(self) -> int:
    """Positions held by all self-attention caches together (bounded by layers * window)."""
    caches = list(self.lower) + [c for g in self.upper for c in g]
    return sum(int(k.shape[1]) for k, _ in caches)
