"""Prepare and read throughput of the sharded data path (measured on this machine).

  python -m benchmarks.data_throughput --corpus=books --workers=2

Prepare: ``gca_jax.data.prepare`` on the corpus with each tokenizer into a fresh folder, timed
from the first tokenised unit to the manifest (tokenizer training excluded): MB/s of text and
tokens/s. Read: ``P`` OS processes (1 and 2), each reading its own share (Grain shard options
``(p, P)``) of T x B windows (global batch B) for ``--read_seconds``; batches/s per process.
Writes ``benchmarks/results/data_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READER = """
import sys, time, grain
from gca_jax.data import shard_pipeline
root, p, n, t, b, secs = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])
ro = grain.ReadOptions(num_threads=4, prefetch_buffer_size=16)
it = iter(shard_pipeline.train_dataset(root, t, b, 0, shard=grain.sharding.ShardOptions(p, n), read_options=ro))
for _ in range(5):
  next(it)
k, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < secs:
  next(it); k += 1
print(k / (time.perf_counter() - t0))
"""


def versions() -> dict:
  import grain
  import numpy
  import sentencepiece
  import tiktoken
  return {"platform": platform.platform(), "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "numpy": numpy.__version__,
          "grain": grain.__version__ if hasattr(grain, "__version__") else "?",
          "tiktoken": tiktoken.__version__, "sentencepiece": sentencepiece.__version__}


def read_rate(root: str, procs: int, seq_len: int, batch: int, secs: float) -> list[float]:
  ps = [subprocess.Popen([sys.executable, "-c", READER, root, str(p), str(procs), str(seq_len),
                          str(batch), str(secs)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for p in range(procs)]
  return [float(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in ps]


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--corpus", default="books")
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--num_shards", type=int, default=16)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--read_seconds", type=float, default=10.0)
  ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "data_throughput.json"))
  a = ap.parse_args()
  from gca_jax.data import prepare
  rows, tmp = {"prepare": {}, "read": {}}, tempfile.mkdtemp(prefix="gca_data_bench.")
  for name in ("gpt2", "sentencepiece"):
    out = os.path.join(tmp, name)
    m = prepare.prepare(a.corpus, out, tokenizer=name, vocab_size=4096, num_shards=a.num_shards,
                        workers=a.workers, progress=False)
    rows["prepare"][name] = {
        "command": f"python -m gca_jax.data.prepare --corpus={a.corpus} --output=DIR "
                   f"--tokenizer={name} --num_shards={a.num_shards} --workers={a.workers}"
                   + (" --vocab_size=4096" if name == "sentencepiece" else ""),
        "text_mb": m["text_bytes"] / 1e6,
        "tokens": sum(s["num_tokens"] for s in m["splits"].values()), **m["prepare"]}
  root = os.path.join(tmp, "gpt2")
  for procs in (1, 2):
    rates = read_rate(root, procs, a.seq_len, a.batch_size, a.read_seconds)
    rows["read"][f"{procs}_process"] = {
        "batches_per_s_per_process": rates, "seq_len": a.seq_len, "global_batch": a.batch_size,
        "rows_per_batch": a.batch_size // procs}
    print(f"read, {procs} process(es): {', '.join(f'{r:.1f}' for r in rates)} batches/s each "
          f"(T={a.seq_len}, global batch {a.batch_size})")
  payload = {"benchmark": "data_throughput", "measured": True, "machine": versions(),
             "corpus": a.corpus, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **rows}
  os.makedirs(os.path.dirname(a.out), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(payload, f, indent=1)
  print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
