"""Where the tiny train step's time goes: XLA:CPU op time per model part, DRT against the
equal-layer-count sliding window (``benchmarks/train_step.py``'s ``sliding_window_equal``).

The model code names its parts with ``jax.named_scope`` (embed, attn, mlp, encoder,
retrieval, gca, head, loss), which XLA keeps in every op's ``op_name``. This script compiles
each train step, profiles ``--steps`` steps with ``jax.profiler``, maps each executed op (by
its HLO instruction name) to the first part named in its ``op_name`` and sums the op time per
part. Op times are thread time: with 2 cores two ops can run at once, so the parts add up to
more than the wall time, which is reported beside them (median over the profiled steps).

python benchmarks/step_profile.py [--lengths=1024] [--steps=3] [--out=benchmarks/results/step_profile.json]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.common import machine_info, write_json  # noqa: E402
from benchmarks.train_step import prepare  # noqa: E402
from gca_jax.config import Experiment  # noqa: E402

# Checked in this order: an encoder layer's attention counts as encoder, not attn.
PARTS = ("loss", "head", "retrieval", "gca", "encoder", "attn", "mlp", "embed")
MODELS = ("drt", "sliding_window_equal")


def part_of(op_name: str) -> str:
  """The model part an op belongs to: the first of ``PARTS`` named in its ``op_name``
  ('other' for the optimiser and anything outside the scopes)."""
  words = set(re.findall(r"[A-Za-z_]+", op_name))
  return next((p for p in PARTS if p in words), "other")


def op_parts(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> model part, from the compiled module's text."""
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text, re.M):
    out[m.group(1)] = part_of(m.group(2))
  return out


def profile(prepared, steps: int) -> tuple[dict[str, float], list[float]]:
  """Milliseconds of op time per part per step, and the wall seconds of each profiled step."""
  parts = op_parts(prepared.step.as_text())
  walls = []
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(prepared.step(prepared.state, prepared.batch))
        walls.append(time.perf_counter() - t0)
    (trace,) = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
    events = json.load(gzip.open(trace))
  events = events["traceEvents"] if isinstance(events, dict) else events
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in parts:
      total[parts[e["name"]]] += e["dur"] / 1e3 / steps
  return {p: round(total[p], 2) for p in (*PARTS, "other")}, walls


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lengths", default="1024")
  ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens // length)")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/step_profile.json")
  args = ap.parse_args(argv)
  if args.steps < 1:
    ap.error("--steps must be >= 1")
  execution = dataclasses.replace(Experiment().execution, cpu_compiler_options="tuned")
  results = []
  for length in (int(x) for x in args.lengths.split(",")):
    rows = {}
    for name in MODELS:
      p = prepare(name, length, args.tokens, execution)
      jax.block_until_ready(p.step(p.state, p.batch))
      ms, walls = profile(p, args.steps)
      rows[name] = {"model": name, "length": length, "batch": p.row["batch"], "wall_ms": 1e3 * statistics.median(walls),
                    "op_ms": ms, "op_ms_total": round(sum(ms.values()), 2)}
    drt, base = rows["drt"], rows["sliding_window_equal"]
    extra = {k: round(drt["op_ms"][k] - base["op_ms"][k], 2) for k in drt["op_ms"]}
    results.append({"length": length, "rows": list(rows.values()), "drt_minus_base_op_ms": extra,
                    "wall_ratio": drt["wall_ms"] / base["wall_ms"], "op_time_ratio": drt["op_ms_total"] / base["op_ms_total"]})
    print(f"T={length}: wall DRT {drt['wall_ms']:.0f} ms, base {base['wall_ms']:.0f} ms "
          f"({results[-1]['wall_ratio']:.3f}x); op ms per part (DRT / base / DRT - base):")
    for k in drt["op_ms"]:
      print(f"  {k:>10}: {drt['op_ms'][k]:8.1f} {base['op_ms'][k]:8.1f} {extra[k]:+8.1f}")
  write_json(args.out, {
      "benchmark": "step_profile", "machine": machine_info(), "preset": "tiny_cpu",
      "what": "XLA:CPU op time (thread ms per step) per named model part, jax.profiler; parts add up to more "
              "than wall time when ops run on both cores at once",
      "parts": list(PARTS), "steps": args.steps, "tokens_per_step": args.tokens, "load_average": os.getloadavg(),
      "results": results,
      "command": "python benchmarks/step_profile.py " + " ".join(argv if argv is not None else sys.argv[1:])})


if __name__ == "__main__":
  main()
