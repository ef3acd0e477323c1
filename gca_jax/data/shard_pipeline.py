"""Grain pipelines over prepared shards: each JAX process reads only the shards it owns.

Training sample ``i`` is the random window (``gca_jax.data.pipeline``'s rule, seeded by
``(seed, i)``) of train shard ``i % G``; process ``p`` of ``P`` takes the samples
``i % P == p`` (Grain ``ShardByJaxProcess``), all inside its shards ``g % P == p``, so ``P``
must divide ``G``. Evaluation deals the non-overlapping validation windows round-robin, the
same number to every process. Iterator state is Grain's, so
checkpoints resume the exact order.
"""

from __future__ import annotations

import os
from typing import Any

import grain

from gca_jax.data import pipeline, shards


def _process_shard(shard: grain.sharding.ShardOptions | None) -> grain.sharding.ShardOptions:
  return shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)


def _owner_check(manifest: dict, split: str, count: int, root) -> int:
  g = len(manifest["splits"][split]["shards"])
  if g % count:
    raise shards.ShardError(
        f"{root} has {g} {split} shards, which {count} processes cannot share evenly; prepare "
        f"it again with --num_shards set to a multiple of {count} (e.g. {count * max(1, g // count)})")
  return g


def train_dataset(root: str | os.PathLike, seq_len: int, batch_size: int, seed: int = 0, *,
                  manifest: dict | None = None, num_samples: int = 0,
                  shard: grain.sharding.ShardOptions | None = None, passkey: dict | None = None,
                  tok: Any = None, windows: str = "across",
                  read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Batched random windows of the train shards this process owns (``batch_size`` is global)."""
  manifest = manifest or shards.load_manifest(root)
  shard = _process_shard(shard)
  _owner_check(manifest, "train", shard.shard_count, root)
  reader = shards.reader(root, manifest, "train", shard.shard_index, shard.shard_count)
  for g in reader.parts:
    pipeline.check_windows_fit(reader, [g], seq_len, windows, f"train shard {g} of {root}")
  return pipeline.random_windows(reader, seq_len, batch_size, seed, num_samples=num_samples,
                                 shard=shard, passkey=passkey, tok=tok, windows=windows,
                                 read_options=read_options)


def eval_dataset(root: str | os.PathLike, seq_len: int, batch_size: int, *,
                 manifest: dict | None = None, shard: grain.sharding.ShardOptions | None = None,
                 read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
  """Batched non-overlapping validation windows, this process's round-robin share."""
  manifest = manifest or shards.load_manifest(root)
  shard = _process_shard(shard)
  rows = shards.eval_windows(manifest, seq_len, shard.shard_index, shard.shard_count)
  reader = shards.reader(root, manifest, "validation", 0, 1)  # opens only the shards of ``rows``
  return pipeline.sequential_windows(reader, rows, seq_len, batch_size, shard, read_options)


def shard_datasets(cfg, tok, passkey: dict | None, read_options: grain.ReadOptions, log=print):
  """``(train, validation)`` for a ``DataConfig`` with ``shards`` set; checks the tokenizer.
  Without a validation window the validation set is empty (and a warning is logged)."""
  manifest = shards.load_manifest(cfg.shards)
  shards.check_tokenizer(manifest, tok, cfg.shards)
  train = train_dataset(cfg.shards, cfg.seq_len, cfg.batch_size, cfg.seed, manifest=manifest,
                        num_samples=cfg.num_samples, passkey=passkey, tok=tok,
                        windows=cfg.windows, read_options=read_options)
  try:
    val = eval_dataset(cfg.shards, cfg.seq_len, cfg.batch_size, manifest=manifest)
  except shards.ShardError as e:
    log(f"warning: no evaluation: {e}")
    val = []
  return train, val
