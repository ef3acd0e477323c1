"""What evaluations share: memory estimates, per-length "not run" rows, engines, timing."""

from __future__ import annotations

import numpy as np

from gca_jax.config import FULL_ATTENTION_TYPES

GB = 1 << 30


def segment_for(cfg, length: int, segment_chunks: int) -> int:
  """Chunks per prefill segment used for ``length``: a power of two up to ``segment_chunks``."""
  need = -(-length // cfg.chunk_size)
  return min(segment_chunks, 1 << max(0, (need - 1).bit_length()))


def estimate_bytes(cfg, batch: int, length: int, segment_chunks: int) -> int:
  """A rough upper estimate of the peak memory of one evaluation batch at ``length`` tokens."""
  d, f32 = cfg.d_model, 4
  tokens = batch * length * 4 * 4
  if cfg.model_type in FULL_ATTENTION_TYPES:
    acts = batch * length * d * f32 * (cfg.num_layers * 12 + 4)
    scores = batch * cfg.num_heads * min(256, length) * length * f32 * 3
    logits = batch * length * cfg.vocab_size * f32 * 2
    return tokens + acts + scores + logits + (256 << 20)
  segment_chunks = segment_for(cfg, length, segment_chunks)
  seg = segment_chunks * (cfg.chunk_size + 1)
  acts = batch * seg * d * f32 * (cfg.num_layers * 16 + 8) + batch * seg * cfg.vocab_size * f32
  store = 0
  if cfg.model_type == "drt":
    chunks = -(-length // cfg.chunk_size) + segment_chunks
    store = batch * chunks * (2 * cfg.chunk_size * cfg.num_kv_heads * cfg.head_dim + d) * f32
  return tokens + acts + store + (256 << 20)


def engine_for(model, engines: dict, length: int, segment_chunks: int, offload: bool):
  """An engine whose segments are no longer than needed for ``length`` (a power of two of
  chunks up to ``segment_chunks``), cached per segment size; None for full attention."""
  from gca_jax.infer import Engine
  cfg = model.cfg
  if cfg.model_type in FULL_ATTENTION_TYPES:
    return None
  seg = segment_for(cfg, length, segment_chunks)
  if seg not in engines:
    engines[seg] = Engine(model, segment_chunks=seg, offload=offload)
  return engines[seg]


def not_run(row: dict, reason: str) -> dict:
  return {**row, "not_run": True, "reason": reason}


def budget_reason(cfg, batch: int, length: int, segment_chunks: int, budget_gb: float) -> str | None:
  """Why ``length`` cannot run within ``budget_gb`` (None when it can)."""
  need = estimate_bytes(cfg, batch, length, segment_chunks)
  if need > budget_gb * GB:
    kind = cfg.model_type
    return (f"{kind} at {length} tokens needs about {need / GB:.1f} GB (estimate) > budget "
            f"{budget_gb:g} GB" + (": full attention keeps O(L) activations and O(L^2) work"
                                   if kind in FULL_ATTENTION_TYPES else ""))
  return None


def parse_lengths(text) -> list[int]:
  """``"4096,16K,1M"`` or a list -> sorted unique positive ints (K = 1024, M = 1024^2)."""
  items = text.split(",") if isinstance(text, str) else list(text)
  out = []
  for it in items:
    s = str(it).strip()
    if not s:
      continue
    mult = 1
    if s[-1] in "kKmM":
      mult = 1024 if s[-1] in "kK" else 1 << 20
      s = s[:-1]
    try:
      v = int(float(s) * mult)
    except ValueError:
      raise ValueError(f"bad length {it!r}: use integers, optionally with K or M (e.g. 4096,64K,1M)") from None
    if v < 1:
      raise ValueError(f"bad length {it!r}: lengths must be positive")
    out.append(v)
  if not out:
    raise ValueError("no lengths given: use e.g. --lengths=1024,4096")
  return sorted(set(out))


def batches(n: int, size: int):
  for i in range(0, n, size):
    yield list(range(i, min(n, i + size)))


def sample_rng(seed: int, length: int, index: int) -> np.random.Generator:
  """Every sample is seeded per (seed, length, index): reproducible and order-independent."""
  return np.random.default_rng([seed, length, index])
