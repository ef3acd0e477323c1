"""The provenance record: package archives from a corpus manifest, host facts from /proc/cpuinfo."""

from __future__ import annotations

import json
import os

from gca_jax import provenance


def _manifest(root, corpus, sources):
  d = root / "corpora" / corpus
  d.mkdir(parents=True)
  (d / "manifest.json").write_text(json.dumps({"corpus": corpus, "sources": sources}))


def test_corpus_sources_names_each_archive_and_its_checksum(tmp_path):
  _manifest(tmp_path, "fam", {
      "b": {"archive": "b_1.0_all.deb", "sha256": "0123456789abcdef" * 4},
      "a": {"archive": "a-2.tar.gz", "sha256": "fedcba9876543210" * 4}})
  got = provenance.corpus_sources("fam", tmp_path)
  assert got == {"a": "a-2.tar.gz@fedcba987654", "b": "b_1.0_all.deb@0123456789ab"}
  assert list(got) == ["a", "b"]


def test_corpus_sources_is_none_for_a_path_or_an_unfetched_corpus(tmp_path):
  assert provenance.corpus_sources("not_fetched", tmp_path) is None
  assert provenance.corpus_sources(str(tmp_path / "my" / "texts"), tmp_path) is None


def test_provenance_lists_each_corpus_once(tmp_path):
  _manifest(tmp_path, "fam", {"a": {"archive": "a.tar.gz", "sha256": "ab" * 32}})
  rec = provenance.provenance(["fam", "fam", "other"], tmp_path)
  assert rec["corpora"] == {"fam": {"a": "a.tar.gz@abababababab"}, "other": None}
  # the host's model as the first "model name" line of /proc/cpuinfo says, read here by hand
  if os.path.exists("/proc/cpuinfo"):
    lines = open("/proc/cpuinfo").read().splitlines()
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("model name")]
    if names:
      assert rec["host"]["cpu_model"] == names[0]


def test_cpuinfo_reads_the_first_processor(tmp_path):
  info = ("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse2 avx2 fma avx512f\n\n"
          "processor\t: 1\nmodel name\t: Other CPU\nflags\t\t: amx_tile\n")
  (tmp_path / "cpuinfo").write_text(info)
  model, isa = provenance._cpuinfo(str(tmp_path / "cpuinfo"))
  assert model == "Test CPU 9000"
  assert isa == ["avx2", "fma", "avx512f"]  # ISA_FLAGS order; amx_tile is the second processor's
