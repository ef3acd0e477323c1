"""Grain input pipelines over a token store: random training windows, sequential eval windows.

Training (method-spec §6.1, B15): sample ``i`` is the ``seq_len``-token window starting at
``default_rng([seed, i]).integers(0, N - seq_len + 1)`` of the split's flat stream (documents
joined by the separator; windows cross document boundaries). It depends only on
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
  """Holds a split's path and memory-maps it lazily (cheap to pickle into Grain workers)."""

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


def window_start(seed: int, index: int, num_tokens: int, seq_len: int) -> int:
  """Start of training window ``index`` (the single definition of the sampling rule)."""
  return int(np.random.default_rng([seed, index]).integers(0, num_tokens - seq_len + 1))


class RandomWindow(grain.transforms.Map):
  """Global sample index -> random window (optionally with needles inserted)."""

  def __init__(self, reader: _SplitReader, seq_len: int, seed: int, passkey: dict | None = None,
               tok: Any = None):
    self.reader, self.seq_len, self.seed, self.passkey, self.tok = reader, seq_len, seed, passkey, tok

  def map(self, index: int) -> dict[str, np.ndarray]:
    tokens = self.reader.data.tokens
    start = window_start(self.seed, int(index), tokens.shape[0], self.seq_len)
    window = np.asarray(tokens[start:start + self.seq_len], np.int32)
    if not self.passkey:
      return {"tokens": window}
    rng = np.random.default_rng([self.seed, int(index), 1])  # needle randomness, per sample
    return passkey_lib.make_passkey_sample(window, self.seq_len, rng, self.tok, **self.passkey)


class SequentialWindow(grain.transforms.Map):
  """Window index -> the ``index``-th non-overlapping window."""

  def __init__(self, reader: _SplitReader, seq_len: int):
    self.reader, self.seq_len = reader, seq_len

  def map(self, index: int) -> dict[str, np.ndarray]:
    s = int(index) * self.seq_len
    return {"tokens": np.asarray(self.reader.data.tokens[s:s + self.seq_len], np.int32)}


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


def train_dataset(store_dir: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0, *,
                  split: str = "train", num_samples: int = 0,
                  shard: grain.sharding.ShardOptions | None = None,
                  passkey: dict | None = None, tok: Any = None,
                  read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Batched random windows of ``split``. ``batch_size`` is global; ``passkey`` holds
  ``make_passkey_sample`` keyword arguments (``variant``, ``token_cnt``, ``layout_chunk``)."""
  reader = _SplitReader(store_dir, split)
  n = reader.data.num_tokens
  if n < seq_len:
    raise ValueError(f"split {split!r} of {store_dir} has {n} tokens, fewer than seq_len={seq_len}")
  if passkey and tok is None:
    raise ValueError("passkey samples need the tokenizer (tok=...) to build their templates")
  shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
  ds = grain.MapDataset.range(num_samples or UNBOUNDED)
  ds = _shard(ds, shard).map(RandomWindow(reader, seq_len, seed, passkey, tok))
  ds = ds.batch(_per_process_batch(batch_size, shard), drop_remainder=True)
  return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=4, prefetch_buffer_size=64))


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
  ds = _shard(grain.MapDataset.range(num), shard).map(SequentialWindow(reader, seq_len))
  ds = ds.batch(_per_process_batch(batch_size, shard), drop_remainder=False)
  return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=8))


def datasets_from_config(cfg, log=print):
  """``(train, validation, tokenizer)`` for a ``DataConfig``: builds the cached tokenizer and
  token store on first use (the corpus must have been fetched)."""
  from gca_jax.data import token_store, tokenizer
  tok = tokenizer.build_tokenizer(cfg.corpus, cfg.vocab_size, cfg.cache_dir, log=log)
  store = token_store.token_store_for(cfg.corpus, tok, cfg.cache_dir, cfg.val_fraction, log=log)
  passkey = None
  if cfg.passkey:
    passkey = {"variant": cfg.passkey, "token_cnt": cfg.passkey_tokens or None,
               "layout_chunk": cfg.layout_chunk}
  ro = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.prefetch)
  train = train_dataset(store, cfg.seq_len, cfg.batch_size, cfg.seed, num_samples=cfg.num_samples,
                        passkey=passkey, tok=tok, read_options=ro)
  val = eval_dataset(store, cfg.seq_len, cfg.batch_size)
  return train, val, tok

