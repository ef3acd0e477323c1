"""Grain input pipelines over a token store: random training windows, sequential eval windows.

Training (docs/method.md, The paper's training recipe): sample ``i`` is the ``seq_len``-token window starting at
``default_rng([seed, i]).integers(0, N - seq_len + 1)`` of the split's flat stream (documents
joined by the separator; windows cross document boundaries); with ``windows='within'`` the
start is uniform over the starts whose window lies inside one document. Prepared shards
(``gca_jax.data.shard_pipeline``) apply the same rule inside shard ``i % G``. It depends only on
``(seed, i)``, so the order is reproducible and independent of sharding, threads and restarts.
Process ``p`` of ``P`` reads global samples ``p, p + P, ...`` (Grain ``ShardByJaxProcess``).
Validation: non-overlapping windows ``[i * seq_len, (i + 1) * seq_len)`` in order.
Elements are dicts of numpy arrays: ``tokens`` int32[B, T] (plus the passkey fields of
``gca_jax.data.passkey`` when needles are inserted). Iterators support Grain's
``get_state``/``set_state``, so a checkpoint resumes the exact data order.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import numpy as np

from gca_jax.data import passkey as passkey_lib
from gca_jax.data.token_store import TokenSplit, load_split

UNBOUNDED = 1 << 40  # "infinite" stream length; samples are still indexed deterministically


class _SplitReader:
  """Holds a split's path and memory-maps it lazily (cheap to pickle into Grain workers).

  The token store is one part (``0``); ``gca_jax.data.shards.ShardReader`` has the same
  methods over many parts (shards)."""

  def __init__(self, store_dir: str | os.PathLike, split: str):
    self.store_dir, self.split = str(store_dir), split
    self._data: TokenSplit | None = None

  @property
  def data(self) -> TokenSplit:
    if self._data is None:
      self._data = load_split(self.store_dir, self.split)
    return self._data

  def __getstate__(self):
    return {"store_dir": self.store_dir, "split": self.split, "_data": None}

  def part_for(self, index: int) -> int:
    del index
    return 0

  def num_tokens(self, part: int) -> int:
    return self.data.num_tokens

  def offsets(self, part: int) -> np.ndarray:
    return self.data.offsets

  def read(self, part: int, start: int, n: int) -> np.ndarray:
    return np.asarray(self.data.tokens[start:start + n], np.int32)


def window_start(seed: int, index: int, num_tokens: int, seq_len: int) -> int:
  """Start of training window ``index`` (the single definition of the sampling rule)."""
  return int(np.random.default_rng([seed, index]).integers(0, num_tokens - seq_len + 1))


def valid_starts(offsets: np.ndarray, seq_len: int) -> np.ndarray:
  """Per document, how many ``seq_len`` windows fit inside it (separator excluded)."""
  return np.maximum(np.diff(np.asarray(offsets, np.int64)) - 1 - seq_len + 1, 0)


def within_start(seed: int, index: int, offsets: np.ndarray, seq_len: int,
                 cum: np.ndarray | None = None) -> int:
  """Start of window ``index`` with ``windows='within'``: uniform over every start whose
  window lies inside one document (``cum``: cached ``cumsum(valid_starts(...))``)."""
  cum = np.cumsum(valid_starts(offsets, seq_len)) if cum is None else cum
  u = int(np.random.default_rng([seed, index]).integers(0, cum[-1]))
  d = int(np.searchsorted(cum, u, side="right"))
  return int(offsets[d]) + u - (int(cum[d - 1]) if d else 0)


class RandomWindow(grain.transforms.Map):
  """Global sample index -> random window (optionally with needles inserted)."""

  def __init__(self, reader, seq_len: int, seed: int, passkey: dict | None = None,
               tok: Any = None, windows: str = "across"):
    self.reader, self.seq_len, self.seed, self.passkey, self.tok = reader, seq_len, seed, passkey, tok
    self.windows, self._cum = windows, {}

  def map(self, index: int) -> dict[str, np.ndarray]:
    index, part = int(index), self.reader.part_for(int(index))
    if self.windows == "within":
      if part not in self._cum:
        self._cum[part] = np.cumsum(valid_starts(self.reader.offsets(part), self.seq_len))
      start = within_start(self.seed, index, self.reader.offsets(part), self.seq_len, self._cum[part])
    else:
      start = window_start(self.seed, index, self.reader.num_tokens(part), self.seq_len)
    window = self.reader.read(part, start, self.seq_len)
    if not self.passkey:
      return {"tokens": window}
    rng = np.random.default_rng([self.seed, index, 1])  # needle randomness, per sample
    return passkey_lib.make_passkey_sample(window, self.seq_len, rng, self.tok, **self.passkey)


class SequentialWindow(grain.transforms.Map):
  """``(part, start)`` -> the ``seq_len`` tokens there (evaluation windows)."""

  def __init__(self, reader, seq_len: int):
    self.reader, self.seq_len = reader, seq_len

  def map(self, row) -> dict[str, np.ndarray]:
    return {"tokens": self.reader.read(int(row[0]), int(row[1]), self.seq_len)}


def _shard(ds: grain.MapDataset, shard: grain.sharding.ShardOptions | None) -> grain.MapDataset:
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if shard.drop_remainder:
    ds = ds[:len(ds) - len(ds) % shard.shard_count]
  return ds[shard.shard_index::shard.shard_count]


def _per_process_batch(batch_size: int, shard: grain.sharding.ShardOptions) -> int:
  if batch_size % shard.shard_count:
    raise ValueError(f"global batch_size={batch_size} must be divisible by the number of JAX "
                     f"processes ({shard.shard_count})")
  return batch_size // shard.shard_count


def check_windows_fit(reader, parts, seq_len: int, windows: str, where: str) -> None:
  """Raises ValueError unless every part has a ``seq_len`` window (inside a document for
  ``windows='within'``)."""
  for part in parts:
    n = reader.num_tokens(part)
    if n < seq_len:
      raise ValueError(f"{where} has {n} tokens, fewer than seq_len={seq_len}")
    if windows == "within" and not valid_starts(reader.offsets(part), seq_len).any():
      raise ValueError(f"{where} has no document of seq_len={seq_len} tokens, as "
                       "windows='within' needs; use windows='across' or a shorter seq_len")


def random_windows(reader, seq_len: int, batch_size: int, seed: int, *, num_samples: int,
                   shard: grain.sharding.ShardOptions, passkey: dict | None, tok: Any,
                   windows: str, read_options: grain.ReadOptions | None) -> grain.IterDataset:
  """Batches of ``RandomWindow`` over the global sample indices this process owns."""
  if passkey and tok is None:
    raise ValueError("passkey samples need the tokenizer (tok=...) to build their templates")
  ds = grain.MapDataset.range(num_samples or UNBOUNDED)
  ds = _shard(ds, shard).map(RandomWindow(reader, seq_len, seed, passkey, tok, windows))
  ds = ds.batch(_per_process_batch(batch_size, shard), drop_remainder=True)
  return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=4, prefetch_buffer_size=64))


def sequential_windows(reader, rows: np.ndarray, seq_len: int, batch_size: int,
                       shard: grain.sharding.ShardOptions,
                       read_options: grain.ReadOptions | None) -> grain.IterDataset:
  """Batches of the ``(part, start)`` windows ``rows`` (already this process's own)."""
  ds = grain.MapDataset.source(rows).map(SequentialWindow(reader, seq_len))
  ds = ds.batch(_per_process_batch(batch_size, shard), drop_remainder=False)
  return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


def train_dataset(store_dir: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0, *,
                  split: str = "train", num_samples: int = 0,
                  shard: grain.sharding.ShardOptions | None = None,
                  passkey: dict | None = None, tok: Any = None, windows: str = "across",
                  read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Batched random windows of ``split``. ``batch_size`` is global; ``passkey`` holds
  ``make_passkey_sample`` keyword arguments (``variant``, ``token_cnt``, ``layout_chunk``, ``alphabet``)."""
  reader = _SplitReader(store_dir, split)
  check_windows_fit(reader, [0], seq_len, windows, f"split {split!r} of {store_dir}")
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  return random_windows(reader, seq_len, batch_size, seed, num_samples=num_samples, shard=shard,
                        passkey=passkey, tok=tok, windows=windows, read_options=read_options)


def eval_dataset(store_dir: str | os.PathLike, seq_len: int, batch_size: int, *,
                 split: str = "validation", shard: grain.sharding.ShardOptions | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Batched sequential non-overlapping windows (the last partial window is dropped; with
  several processes the window count is cut to a multiple of the process count)."""
  reader = _SplitReader(store_dir, split)
  num = reader.data.num_tokens // seq_len
  if num == 0:
    raise ValueError(f"split {split!r} has {reader.data.num_tokens} tokens, fewer than seq_len={seq_len}")
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  num -= num % shard.shard_count if shard.drop_remainder else 0
  rows = np.stack([np.zeros(num, np.int64), np.arange(num, dtype=np.int64) * seq_len], 1)
  return sequential_windows(reader, rows[shard.shard_index::shard.shard_count], seq_len,
                            batch_size, shard, read_options)


def datasets_from_config(cfg, log=print):
  """``(train, validation, tokenizer)`` for a ``DataConfig``: prepared ``shards`` read per
  process, or the cached local token store of ``corpus`` (built on first use; the corpus
  must have been fetched). ``train`` reads ``cfg``'s own windows (not its curriculum)."""
  stages, val, tok = staged_datasets_from_config(cfg, None, log=log)
  return stages[-1][2], val, tok


def staged_datasets_from_config(cfg, total_steps: int | None, log=print):
  """``([(first_step, stage_config, train), ...], validation, tokenizer)``: one training dataset
  per stage of ``cfg.stages(total_steps)`` (its curriculum, then its own windows; just the latter
  when ``total_steps`` is None). Validation uses ``cfg``'s own windows."""
  from gca_jax.data import token_store, tokenizer
  tok = tokenizer.tokenizer_from_config(cfg, log=log)
  passkey = None
  if cfg.passkey:
    passkey = {"variant": cfg.passkey, "token_cnt": cfg.passkey_tokens or None,
               "layout_chunk": cfg.layout_chunk, "alphabet": cfg.passkey_alphabet}
  ro = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
  plan = [(0, cfg)] if total_steps is None else cfg.stages(total_steps)
  if cfg.shards:
    from gca_jax.data import shard_pipeline
    built = [(s, c, *shard_pipeline.shard_datasets(c, tok, passkey, ro, log=log)) for s, c in plan]
    return [(s, c, train) for s, c, train, _ in built], built[-1][3], tok
  store = token_store.token_store_for(cfg.corpus, tok, cfg.cache_dir, cfg.val_fraction, log=log)
  stages = [(s, c, train_dataset(store, c.seq_len, c.batch_size, c.seed, num_samples=c.num_samples,
                                 passkey=passkey, tok=tok, windows=c.windows, read_options=ro))
            for s, c in plan]
  return stages, eval_dataset(store, cfg.seq_len, cfg.batch_size), tok
