"""Token store split by document, PG19-style windows, sharding and iterator checkpoints."""

from __future__ import annotations

import os

import grain
import numpy as np
import pytest

from gca_jax.data import pipeline, token_store
from gca_jax.config import ConfigError as DataConfigError, DataConfig

SEP = 3


class CharTok:
  """Stand-in tokenizer: one id per character (``ord``), separator 3."""

  vocab_size, sep_id, fingerprint = 300, SEP, "chartok"

  def encode_batch(self, texts):
    return [[ord(c) for c in t] for t in texts]


def make_docs(n=40):
  rng = np.random.default_rng(0)
  return [{"id": f"doc{i}", "source": "test",
           "text": "".join(chr(97 + x) for x in rng.integers(0, 26, 50 + 37 * i))} for i in range(n)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  docs = make_docs()
  path = token_store.build_token_store(docs, CharTok(), tmp_path_factory.mktemp("s") / "store",
                                       val_fraction=0.1, log=lambda *_: None)
  return path, docs


def no_shard():
  return grain.sharding.ShardOptions(shard_index=0, shard_count=1)


def test_store_split_by_document(store):
  path, docs = store
  tr, va = token_store.load_split(path, "train"), token_store.load_split(path, "validation")
  assert tr.tokens.dtype == np.uint16
  assert set(tr.doc_ids).isdisjoint(va.doc_ids)
  assert sorted(tr.doc_ids + va.doc_ids) == sorted(d["id"] for d in docs)
  assert va.num_docs >= 1
  assert va.num_tokens >= 0.1 * (tr.num_tokens + va.num_tokens) - 40  # held-out share of tokens
  by_id = {d["id"]: d["text"] for d in docs}
  for split in (tr, va):
    for d, doc_id in enumerate(split.doc_ids):
      assert "".join(map(chr, split.doc(d))) == by_id[doc_id]
      assert split.tokens[split.offsets[d + 1] - 1] == SEP  # separator after every document
    assert split.offsets[-1] == split.num_tokens


def test_split_is_deterministic_and_rebuild_skipped(store, tmp_path):
  path, docs = store
  ids = [d["id"] for d in docs]
  sizes = [len(d["text"]) for d in docs]
  assert token_store.split_documents(ids, sizes, 0.1) == token_store.split_documents(ids, sizes, 0.1)
  assert token_store.split_documents(ids, sizes, 0.1, seed=1) != token_store.split_documents(ids, sizes, 0.1)
  before = os.stat(path / "meta.json").st_mtime_ns
  token_store.build_token_store(docs, CharTok(), path, 0.1)
  assert os.stat(path / "meta.json").st_mtime_ns == before
  with pytest.raises(FileNotFoundError, match="token store"):
    token_store.load_split(tmp_path, "train")


def test_window_matches_hand_computation(store):
  path, _ = store
  tr = token_store.load_split(path, "train")
  t, seed = 64, 7
  batches = pipeline.train_dataset(path, t, 4, seed, shard=no_shard())
  b = next(iter(batches))["tokens"]
  assert b.shape == (4, t) and b.dtype == np.int32
  flat = np.concatenate([np.append(tr.doc(d), SEP) for d in range(tr.num_docs)])  # docs + separators
  for i in range(4):
    start = int(np.random.default_rng([seed, i]).integers(0, len(flat) - t + 1))
    np.testing.assert_array_equal(b[i], flat[start:start + t])
  again = next(iter(pipeline.train_dataset(path, t, 4, seed, shard=no_shard())))["tokens"]
  np.testing.assert_array_equal(b, again)
  other = next(iter(pipeline.train_dataset(path, t, 4, seed + 1, shard=no_shard())))["tokens"]
  assert not np.array_equal(b, other)


def test_process_shards_disjoint_and_covering(store):
  path, _ = store
  full = np.concatenate([x["tokens"] for x in pipeline.train_dataset(
      path, 32, 4, 0, num_samples=16, shard=no_shard())])
  parts = [np.concatenate([x["tokens"] for x in pipeline.train_dataset(
      path, 32, 4, 0, num_samples=16, shard=grain.sharding.ShardOptions(k, 2))]) for k in (0, 1)]
  assert parts[0].shape == parts[1].shape == (8, 32)
  np.testing.assert_array_equal(parts[0], full[0::2])  # global samples 0, 2, 4, ...
  np.testing.assert_array_equal(parts[1], full[1::2])
  with pytest.raises(ValueError, match="divisible"):
    pipeline.train_dataset(path, 32, 3, 0, shard=grain.sharding.ShardOptions(0, 2))


def test_iterator_checkpoint_restore(store):
  path, _ = store
  ds = pipeline.train_dataset(path, 48, 4, 3, shard=no_shard())
  it = iter(ds)
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it)["tokens"] for _ in range(3)]
  fresh = iter(pipeline.train_dataset(path, 48, 4, 3, shard=no_shard()))
  fresh.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(fresh)["tokens"], e)


def test_eval_windows_sequential(store):
  path, _ = store
  va = token_store.load_split(path, "validation")
  t = 16
  rows = np.concatenate([b["tokens"] for b in pipeline.eval_dataset(path, t, 4, shard=no_shard())])
  n = va.num_tokens // t
  np.testing.assert_array_equal(rows, np.asarray(va.tokens[:n * t]).reshape(n, t))


def test_passkey_option(store):
  path, _ = store

  class Tok(CharTok):
    pad_id, digit_ids = 0, [ord(c) for c in "0123456789"]

    def encode(self, s):
      return [ord(c) for c in s]
  ds = pipeline.train_dataset(path, 256, 2, 0, shard=no_shard(), tok=Tok(),
                              passkey={"variant": "single", "token_cnt": 4, "layout_chunk": 48})
  b = next(iter(ds))
  assert b["tokens"].shape == (2, 256)
  assert (b["key_pos"] == 256 - 48 + 1).all()


def test_errors(store):
  path, _ = store
  with pytest.raises(ValueError, match="fewer than seq_len"):
    pipeline.train_dataset(path, 10**9, 1, 0, shard=no_shard())
  with pytest.raises(ValueError, match="tokenizer"):
    pipeline.train_dataset(path, 64, 1, 0, shard=no_shard(), passkey={"variant": "single"})
  with pytest.raises(DataConfigError, match="DataConfig.passkey"):
    DataConfig(passkey="double")
  with pytest.raises(DataConfigError, match="DataConfig.seq_len"):
    DataConfig(seq_len=0)
