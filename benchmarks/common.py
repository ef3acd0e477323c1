"""Shared benchmark helpers: machine/version record, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax

from gca_jax.provenance import host_facts


def machine_info() -> dict:
  import flax
  import numpy
  return {
      **host_facts(), "processor": platform.processor() or platform.machine(),
      "flax": flax.__version__, "numpy": numpy.__version__, "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
  }


def time_fn(fn, *args, reps: int = 3) -> dict:
  """Compile+first-call time, then the median of ``reps`` timed calls (blocking on results)."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return {"first_call_s": first, "median_s": statistics.median(times), "times_s": times}


def write_json(path: str, payload: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, path)
  print(f"wrote {path}")


def cost_ratios(rows: list[dict], base: str = "sliding_window") -> dict:
  """Per length, each model's median step time over ``base``'s (printed and returned)."""
  ratios = {}
  for length in sorted({r["length"] for r in rows}):
    by = {r["model"]: r for r in rows if r["length"] == length}
    if base not in by:
      continue
    ratios[str(length)] = {m: by[m]["median_s"] / by[base]["median_s"] for m in by}
    print(f"T={length}: step time relative to {base}: " +
          ", ".join(f"{m} {v:.2f}x" for m, v in ratios[str(length)].items()))
  return ratios
