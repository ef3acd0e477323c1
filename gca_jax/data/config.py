"""``DataConfig``: what the data pipeline reads and how it samples (to move into gca_jax.config)."""

from __future__ import annotations

import dataclasses

from gca_jax.data.passkey import VARIANTS


class DataConfigError(ValueError):
  """A data configuration value is invalid; the message names the field and what would work."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Corpus, tokenizer, windows and batching.

  ``batch_size`` is global; each JAX process loads ``batch_size // process_count`` rows.
  ``num_samples`` 0 means an unbounded stream of random windows. ``passkey`` "" trains on plain
  windows; "single"/"multihop"/"multi" inserts needles (method-spec §7.2) with a
  ``layout_chunk``-token layout.
  """

  corpus: str = "books"
  cache_dir: str | None = None
  vocab_size: int = 4096
  val_fraction: float = 0.05
  seq_len: int = 512  # raw tokens per window (landmarks are added by the model)
  batch_size: int = 32
  seed: int = 0
  num_samples: int = 0
  num_threads: int = 4
  prefetch: int = 64
  passkey: str = ""
  passkey_tokens: int = 0  # 0: the variant's default (single 10, multihop/multi 5)
  layout_chunk: int = 64

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    def fail(field, expected):
      raise DataConfigError(f"DataConfig.{field}={getattr(self, field)!r} is invalid: {expected}")
    for name in ("vocab_size", "seq_len", "batch_size", "layout_chunk"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        fail(name, "must be a positive integer")
    for name in ("num_samples", "num_threads", "prefetch", "passkey_tokens", "seed"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        fail(name, "must be an integer >= 0")
    if self.vocab_size < 300:
      fail("vocab_size", "must be >= 300 (byte fallback needs 256 ids plus specials)")
    if not 0.0 <= self.val_fraction < 1.0:
      fail("val_fraction", "must be in [0, 1)")
    if not self.corpus:
      fail("corpus", "name a fetched corpus (books, books_pypi) or a path")
    if self.passkey and self.passkey not in VARIANTS:
      fail("passkey", f"use '' (plain windows) or one of {VARIANTS}")
    if self.passkey and self.seq_len <= 3 * self.layout_chunk:
      fail("seq_len", f"must be > 3*layout_chunk={3 * self.layout_chunk} for passkey samples")
