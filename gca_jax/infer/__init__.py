"""Long-context inference for DRT and its baselines: chunk memory (device or host), rolling
self-attention caches, segmented prefill (full or tail-exact), incremental decoding, generate."""

from __future__ import annotations

from gca_jax.infer.engine import Engine, PrefillOutput
from gca_jax.infer.generate import generate
from gca_jax.infer.memory import ChunkStore

__all__ = ["Engine", "PrefillOutput", "ChunkStore", "generate"]
