"""Reading prepared shards: windows by the documented rule (shard ``i % G``, seeded start),
within-document windows, per-process shares, evaluation windows, exact resume, bad shards."""

from __future__ import annotations

import json

import grain
import numpy as np
import pytest

from data_corpus import manifest_of, shard_tokens, texts, write_jsonl
from gca_jax.config import DataConfig
from gca_jax.data import pipeline, prepare, shard_pipeline, shards

QUIET = dict(progress=False, log=lambda *_: None, workers=1)
T, SEP = 32, 50256


def opts(p=0, n=1):
  return grain.sharding.ShardOptions(shard_index=p, shard_count=n)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  base = tmp_path_factory.mktemp("shards")
  write_jsonl(base / "c.jsonl", texts(40))
  prepare.prepare(str(base / "c.jsonl"), str(base / "p"), tokenizer="gpt2", num_shards=4,
                  val_fraction=0.2, **QUIET)
  return base / "p"


def rows(ds, n):
  it = iter(ds)
  return np.concatenate([next(it)["tokens"] for _ in range(n)])


def test_windows_follow_the_rule(root):
  m = manifest_of(root)
  got = rows(shard_pipeline.train_dataset(root, T, 4, 7, shard=opts()), 3)
  for i, row in enumerate(got):
    tokens = shard_tokens(root, m, "train", i % 4)
    start = int(np.random.default_rng([7, i]).integers(0, len(tokens) - T + 1))
    np.testing.assert_array_equal(row, tokens[start:start + T])


def test_within_document_windows(root):
  m = manifest_of(root)
  got = rows(shard_pipeline.train_dataset(root, T, 8, 1, shard=opts(), windows="within"), 8)
  docs = set()
  for i, row in enumerate(got):
    g = i % 4
    tokens = shard_tokens(root, m, "train", g)
    off = np.load(root / m["splits"]["train"]["shards"][g]["docs"])
    hits = [(d, s) for d in range(len(off) - 1) for s in range(off[d], off[d + 1] - T)
            if np.array_equal(tokens[s:s + T], row)]
    assert hits and SEP not in row  # inside one document, never across a separator
    docs.add((g, hits[0][0]))
  assert len(docs) > 8  # spread over many documents
  longest = min(e["num_tokens"] for e in m["splits"]["train"]["shards"])  # fits across documents
  shard_pipeline.train_dataset(root, longest, 4, 0, shard=opts())
  with pytest.raises(ValueError, match=f"no document of seq_len={longest}"):
    shard_pipeline.train_dataset(root, longest, 4, 0, shard=opts(), windows="within")


def test_process_shares_and_ownership(root):
  full = rows(shard_pipeline.train_dataset(root, T, 4, 2, shard=opts()), 4)
  for p in range(2):
    part = rows(shard_pipeline.train_dataset(root, T, 4, 2, shard=opts(p, 2)), 4)  # 2 rows each
    np.testing.assert_array_equal(part, full[p::2])
  r = shards.reader(root, manifest_of(root), "train", 1, 2)
  assert sorted(r.parts) == [1, 3]
  with pytest.raises(shards.ShardError, match="not among this process's shards"):
    r.read(0, 0, 4)
  with pytest.raises(shards.ShardError, match="4 train shards.*multiple of 3"):
    shard_pipeline.train_dataset(root, T, 3, 0, shard=opts(0, 3))


def test_eval_windows_dealt_round_robin(root):
  m = manifest_of(root)
  seq = [shard_tokens(root, m, "validation", g) for g in range(4)]
  ref = np.stack([s[k * T:(k + 1) * T] for s in seq for k in range(len(s) // T)])
  ref = ref[:len(ref) - len(ref) % 2]
  both = [np.concatenate(list(b["tokens"] for b in shard_pipeline.eval_dataset(root, T, 4, shard=opts(p, 2))))
          for p in range(2)]
  np.testing.assert_array_equal(both[0], ref[0::2])
  np.testing.assert_array_equal(both[1], ref[1::2])


def test_iterator_state_resumes_exactly(root):
  it = iter(shard_pipeline.train_dataset(root, T, 4, 3, shard=opts()))
  for _ in range(5):
    next(it)
  state = it.get_state()
  want = [next(it)["tokens"] for _ in range(3)]
  fresh = iter(shard_pipeline.train_dataset(root, T, 4, 3, shard=opts()))
  fresh.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(fresh)["tokens"], w)


def test_datasets_from_config_checks_the_tokenizer(root):
  cfg = DataConfig(shards=str(root), tokenizer="gpt2", vocab_size=50265, seq_len=T, batch_size=4)
  train, _, tok = pipeline.datasets_from_config(cfg, log=lambda *_: None)
  assert tok.name == "gpt2" and next(iter(train))["tokens"].shape == (4, T)
  other = DataConfig(shards=str(root), vocab_size=4096, seq_len=T, batch_size=4)
  with pytest.raises(shards.ShardError, match="prepared with the gpt2 tokenizer"):
    pipeline.datasets_from_config(other, log=lambda *_: None)
  spm_like = type("Tok", (), {"name": "sentencepiece", "fingerprint": "x", "vocab_size": 4096})
  with pytest.raises(shards.ShardError, match="made with the gpt2 tokenizer.*--tokenizer=sentencepiece"):
    shards.check_tokenizer(manifest_of(root), spm_like, root)


def _copy(root, dst):
  dst.mkdir()
  for p in root.iterdir():
    if p.is_file():
      (dst / p.name).write_bytes(p.read_bytes())
  return dst


def test_bad_shards_are_clear_errors(root, tmp_path):
  m = manifest_of(root)
  first = m["splits"]["train"]["shards"][0]

  def first_batch(path, windows="across"):
    return next(iter(shard_pipeline.train_dataset(path, T, 4, 0, shard=opts(), windows=windows)))
  with pytest.raises(shards.ShardError, match="no manifest.json in .*gca_jax.data.prepare"):
    shards.load_manifest(tmp_path)
  bad = _copy(root, tmp_path / "json")
  (bad / "manifest.json").write_text("{oops")
  with pytest.raises(shards.ShardError, match="manifest.json is not valid JSON"):
    shards.load_manifest(bad)
  gone = _copy(root, tmp_path / "gone")
  (gone / first["tokens"]).unlink()
  with pytest.raises(shards.ShardError, match=f"{first['tokens']} is missing; rerun the prepare"):
    first_batch(gone)
  cut = _copy(root, tmp_path / "cut")
  (cut / first["tokens"]).write_bytes((cut / first["tokens"]).read_bytes()[:-2])
  with pytest.raises(shards.ShardError, match=f"{first['tokens']} is corrupt"):
    first_batch(cut)
  flip = _copy(root, tmp_path / "flip")
  (flip / first["tokens"]).write_bytes(b"\xff" * len((flip / first["tokens"]).read_bytes()))
  with pytest.raises(shards.ShardError, match="holds id 65535 >= vocab_size 50265"):
    first_batch(flip)
  docs = _copy(root, tmp_path / "docs")
  (docs / first["docs"]).write_bytes(b"junk")
  with pytest.raises(shards.ShardError, match=f"{first['docs']} is corrupt"):
    first_batch(docs, "within")
  assert json.loads((root / "manifest.json").read_text()) == m  # the originals are untouched
