"""prepare: shards hold every document once (GPT-2 ids + separator), split by the documented
hash rule; the manifest is complete; a crashed prepare resumes; any etils path works; bad
input is a clear error with nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import fsspec
import grain
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from data_corpus import held_out, manifest_of, shard_tokens, texts, write_jsonl
from gca_jax.data import gpt2, prepare, prepare_inputs, shard_pipeline, shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(progress=False, log=lambda *_: None, workers=1)


@pytest.fixture(scope="module")
def tok():
  return gpt2.GPT2Tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  docs = texts(40) + [""]  # one empty document: skipped and counted
  write_jsonl(root / "c.jsonl", docs)
  return root / "c.jsonl", docs


def _stream(root, m, split):
  return np.concatenate([shard_tokens(root, m, split, g) for g in range(m["num_shards"])])


def test_shards_hold_every_document_once(corpus, tok, tmp_path):
  path, docs = corpus
  out = tmp_path / "p"
  prepare.prepare(str(path), str(out), tokenizer="gpt2", num_shards=7, val_fraction=0.2, **QUIET)
  m = manifest_of(out)
  assert (m["documents"], m["empty_documents"], m["num_shards"]) == (40, 1, 7)
  assert m["tokenizer"] == {"name": "gpt2", "fingerprint": tok.fingerprint, "vocab_size": 50265,
                            "sep_id": 50256, "pad_id": 50257, "landmark_id": 50264}
  for split in ("train", "validation"):  # byte ranges keep the file order of the lines
    want = [t for i, t in enumerate(docs[:40]) if held_out(f"doc{i}", 0.2) == (split == "validation")]
    ref = np.concatenate([np.asarray(tok.encode(t) + [50256]) for t in want])
    np.testing.assert_array_equal(_stream(out, m, split), ref)
    assert m["splits"][split]["num_docs"] == len(want) and m["splits"][split]["num_tokens"] == len(ref)
    for g, e in enumerate(m["splits"][split]["shards"]):
      off = np.load(out / e["docs"])
      t = shard_tokens(out, m, split, g)
      assert off[-1] == len(t) == e["num_tokens"] and len(off) == e["num_docs"] + 1
      assert (t[off[1:] - 1] == 50256).all()  # the separator closes every document
      for key in ("tokens", "docs"):
        assert hashlib.sha256((out / e[key]).read_bytes()).hexdigest() == e["sha256"][key]
  assert m["splits"]["validation"]["num_docs"] > 0
  assert sum(e["num_docs"] > 0 for e in m["splits"]["train"]["shards"]) == 7
  assert prepare.verify(str(out)) == []


def test_text_folder_one_document_per_file(tmp_path, tok):
  src = tmp_path / "txt"
  (src / "sub").mkdir(parents=True)
  docs = texts(6, seed=3)
  for i, t in enumerate(docs):
    (src / ("sub" if i % 2 else "") / f"f{i}.txt").write_text(t + "  \n\n")  # normalised away
  prepare.prepare(str(src), str(tmp_path / "p"), tokenizer="gpt2", num_shards=2, val_fraction=0,
                  **QUIET)
  m = manifest_of(tmp_path / "p")
  names = sorted(str(p.relative_to(src)) for p in src.rglob("*.txt"))
  by_name = {f"{'sub/' if i % 2 else ''}f{i}.txt": t for i, t in enumerate(docs)}
  ref = np.concatenate([np.asarray(tok.encode(by_name[n]) + [50256]) for n in names])
  np.testing.assert_array_equal(_stream(tmp_path / "p", m, "train"), ref)


def test_crashed_prepare_resumes_and_keeps_finished_shards(corpus, tmp_path, monkeypatch):
  path, _ = corpus
  out, real = tmp_path / "p", prepare.tokenize_unit

  def crash_on_unit_2(job):
    if job["unit"] == 2:
      raise KeyboardInterrupt  # as if killed while tokenising unit 2
    return real(job)
  monkeypatch.setattr(prepare, "tokenize_unit", crash_on_unit_2)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(str(path), str(out), tokenizer="gpt2", num_shards=4, **QUIET)
  assert not (out / "manifest.json").exists()  # readers refuse the folder
  with pytest.raises(shards.ShardError, match="resumes when rerun"):
    shards.load_manifest(out)
  assert sorted(p.name for p in (out / "units").iterdir()) == ["unit-00000.json", "unit-00001.json"]
  assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing half-written
  kept = (out / "units" / "unit-00000.json").stat().st_mtime_ns
  monkeypatch.setattr(prepare, "tokenize_unit", real)
  logs = []
  prepare.prepare(str(path), str(out), tokenizer="gpt2", num_shards=4, progress=False,
                  log=logs.append, workers=1)
  assert any("2/4 shards already prepared" in line for line in logs)
  assert (out / "units" / "unit-00000.json").stat().st_mtime_ns == kept
  fresh = tmp_path / "fresh"
  prepare.prepare(str(path), str(fresh), tokenizer="gpt2", num_shards=4, **QUIET)
  a, b = manifest_of(out), manifest_of(fresh)
  assert a["splits"] == b["splits"]  # same files, same checksums


class FakeGCS(MemoryFileSystem):
  """An in-memory filesystem answering for gs:// (stands in for GCS: no local paths)."""

  protocol = ("gs", "gcs")
  store, pseudo_dirs = {}, [""]

  def __init__(self, *args, finalize_on_close=None, **kwargs):
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    return MemoryFileSystem._strip_protocol(str(path).removeprefix("gs://").removeprefix("gcs://"))


def test_gs_path_round_trip(corpus, tmp_path):
  for p in ("gs", "gcs"):
    fsspec.register_implementation(p, FakeGCS, clobber=True)
  path, _ = corpus
  prepare.prepare(str(path), "gs://bucket/books", tokenizer="gpt2", num_shards=4, **QUIET)
  prepare.prepare(str(path), str(tmp_path / "local"), tokenizer="gpt2", num_shards=4, **QUIET)
  assert "/bucket/books/manifest.json" in FakeGCS.store
  assert prepare.verify("gs://bucket/books") == []
  def first_batches(root):
    it = iter(shard_pipeline.train_dataset(root, 32, 4, 5, shard=grain.sharding.ShardOptions(0, 1)))
    return np.stack([next(it)["tokens"] for _ in range(3)])
  np.testing.assert_array_equal(first_batches("gs://bucket/books"), first_batches(str(tmp_path / "local")))


def test_bad_input_is_a_clear_error(corpus, tmp_path):
  path, _ = corpus
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(prepare_inputs.PrepareError, match="existing file; pass a folder"):
    prepare.prepare(str(path), str(a_file), **QUIET)
  with pytest.raises(prepare_inputs.PrepareError, match="does not exist"):
    prepare.prepare(str(tmp_path / "nope.jsonl"), str(tmp_path / "o1"), **QUIET)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n{"text": oops}\n')
  with pytest.raises(prepare_inputs.PrepareError, match=r"bad.jsonl at byte 17: not valid JSON"):
    prepare.prepare(str(bad), str(tmp_path / "o2"), num_shards=1, **QUIET)
  assert not (tmp_path / "o2" / "manifest.json").exists()
  prepare.prepare(str(path), str(tmp_path / "o3"), num_shards=2, **QUIET)
  with pytest.raises(prepare_inputs.PrepareError, match="other settings.*--force"):
    prepare.prepare(str(path), str(tmp_path / "o3"), num_shards=3, **QUIET)
  txt = tmp_path / "two"
  txt.mkdir()
  for i in range(2):
    (txt / f"{i}.txt").write_text("some text")
  with pytest.raises(prepare_inputs.PrepareError, match="smaller --num_shards"):
    prepare.prepare(str(txt), str(tmp_path / "o4"), num_shards=3, **QUIET)


def test_cli_verify_names_a_corrupt_shard(corpus, tmp_path):
  path, _ = corpus
  out = tmp_path / "p"
  prepare.prepare(str(path), str(out), num_shards=2, **QUIET)
  m = manifest_of(out)
  victim = out / m["splits"]["train"]["shards"][1]["tokens"]
  raw = bytearray(victim.read_bytes())
  raw[10] ^= 0xFF
  victim.write_bytes(bytes(raw))
  r = subprocess.run([sys.executable, "-m", "gca_jax.data.prepare", f"--verify={out}"], cwd=REPO,
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 1 and f"{victim} is corrupt" in r.stdout
  r = subprocess.run([sys.executable, "-m", "gca_jax.data.prepare", f"--corpus={path}",
                      f"--output={tmp_path / 'f'}", "--tokenizer=gpt2", "--num_shards=-1"],
                     cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 1 and "error: --num_shards" in r.stderr and "Traceback" not in r.stderr
  assert json.loads((out / "manifest.json").read_text())["num_shards"] == 2
