"""What a run's numbers depend on beyond its experiment: the host and the fetched corpora.

A training is bit-reproducible on one host (same losses at every logged step across runs), but
XLA:CPU compiles for the host's instruction set, and a corpus is rebuilt from whatever package
versions the registry serves that day. Both are recorded beside the results (the run's
``summary.json``, the demo's and replicate's ``results.json``, the benchmarks' machine record)
so two runs that disagree can be told apart by their inputs.
"""

from __future__ import annotations

import json
import os
import platform

from gca_jax.data import cache

# Instruction-set extensions that change XLA:CPU's generated code (vector width, FMA, bf16, AMX).
ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "asimd", "sve")


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, list[str]]:
  """The first processor's model name and the ``ISA_FLAGS`` it has (in that order)."""
  model, flags = platform.processor() or platform.machine(), set()
  try:
    with open(path) as f:
      for line in f:
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and val.strip():
          model = val.strip()
        elif key in ("flags", "features"):
          flags.update(val.split())
        if key == "" and flags:  # the first processor's block is enough
          break
  except OSError:
    pass
  return model, [f for f in ISA_FLAGS if f in flags]


def host_facts() -> dict:
  """CPU model and vector extensions, core count, and the library versions that compile the
  program (jax, jaxlib) with any ``XLA_FLAGS`` in force."""
  import jax
  import jaxlib
  model, isa = _cpuinfo()
  return {"cpu_model": model, "cpu_isa": isa, "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def corpus_sources(corpus: str, cache_dir: str | os.PathLike | None = None) -> dict | None:
  """``{source: archive@sha256-prefix}`` of a fetched corpus (from its ``manifest.json``), or
  None for a user's own corpus (a path) or one not fetched yet."""
  path = cache.cache_root(cache_dir) / "corpora" / corpus / "manifest.json"
  if os.sep in corpus or not path.exists():
    return None
  manifest = json.loads(path.read_text())
  return {name: f"{s.get('archive', '?')}@{str(s.get('sha256', ''))[:12]}"
          for name, s in sorted(manifest.get("sources", {}).items())}


def provenance(corpora, cache_dir: str | os.PathLike | None = None) -> dict:
  """The host and the package archives behind each of ``corpora`` (names of fetched corpora)."""
  return {"host": host_facts(),
          "corpora": {c: corpus_sources(c, cache_dir) for c in dict.fromkeys(corpora)}}
