"""The tiny train step compiled with XLA:CPU's default options and with
``execution.cpu_compiler_options="tuned"`` (what training uses on CPU), timed interleaved (A/B)
in one process so machine drift cancels; the ratio is the median of per-round ratios.

python benchmarks/cpu_compiler_options.py [--lengths=1024,16384] [--models=drt,sliding_window_equal]
    [--rounds=7] [--out=benchmarks/results/cpu_compiler_options.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine_info, write_json  # noqa: E402
from benchmarks.train_step import prepare, time_round_robin  # noqa: E402
from gca_jax.config import ExecutionConfig  # noqa: E402


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lengths", default="1024,16384")
  ap.add_argument("--models", default="drt,sliding_window_equal")
  ap.add_argument("--tokens", type=int, default=16384)
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--out", default="benchmarks/results/cpu_compiler_options.json")
  args = ap.parse_args(argv)
  variants = {tag: ExecutionConfig(cpu_compiler_options=tag) for tag in ("default", "tuned")}
  rows = []
  for length in (int(x) for x in args.lengths.split(",")):
    for model in args.models.split(","):
      prepared = []
      for tag, execution in variants.items():
        prepared.append(dataclasses.replace(prepare(model, length, args.tokens, execution), name=tag))
      times = time_round_robin(prepared, args.rounds)
      per_round = [t / d for t, d in zip(times["tuned"], times["default"])]
      row = {"model": model, "length": length, "batch": prepared[0].row["batch"],
             "median_s": {k: statistics.median(v) for k, v in times.items()}, "times_s": times,
             "tuned_over_default": statistics.median(per_round)}
      rows.append(row)
      print(f"{model:>21} T={length:>6}: default {row['median_s']['default']:.3f} s, tuned "
            f"{row['median_s']['tuned']:.3f} s -> tuned/default {row['tuned_over_default']:.3f}x "
            f"(load {os.getloadavg()[0]:.2f})", flush=True)
  write_json(args.out, {"benchmark": "cpu_compiler_options", "machine": machine_info(),
                        "options": {k: v.compiler_options("cpu") for k, v in variants.items()}, "tokens_per_step": args.tokens, "rounds": args.rounds,
                        "results": rows, "load_average_after": os.getloadavg(),
                        "command": "python benchmarks/cpu_compiler_options.py " + " ".join(argv or sys.argv[1:])})


if __name__ == "__main__":
  main()
