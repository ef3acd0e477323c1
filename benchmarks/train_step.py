"""Tokens/s and CPU model-FLOPs utilisation of the tiny train step: DRT vs sliding window vs
full attention of equal depth, at several lengths.

MFU = model FLOPs per second / matmul peak, both measured here in the same run: the peak is a
large float32 matmul timed with the same XLA backend; model FLOPs are 6 x parameters x tokens
(dense matmul work of forward+backward, the usual MFU convention) plus XLA's own estimate of the
compiled step (``cost_analysis``, which also counts attention, remat and the optimiser).

python benchmarks/train_step.py [--lengths=1024,4096,16384] [--out=benchmarks/results/train_step.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import cost_ratios, machine_info, time_fn, write_json  # noqa: E402
from experiments.presets import MODEL_PRESETS  # noqa: E402
from gca_jax.config import OptimConfig  # noqa: E402
from gca_jax.model import build_model, count_params  # noqa: E402
from gca_jax.train.optim import make_optimizer  # noqa: E402
from gca_jax.train.step import init_state, make_train_step  # noqa: E402

MODELS = ("drt", "sliding_window", "full_attention")


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of an n x n float32 matmul under XLA on this backend (the best of ``reps``)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x, y: x @ y)
  t = time_fn(mm, a, a, reps=reps)
  return 2 * n ** 3 / min(t["times_s"])


def bench(model_type: str, length: int, tokens: int, reps: int, peak: float) -> dict:
  cfg = dataclasses.replace(MODEL_PRESETS["tiny_cpu"], model_type=model_type)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  tx = make_optimizer(OptimConfig(), 1000)
  graphdef, state = init_state(model, tx, 0)
  batch = max(1, tokens // length)
  toks = jax.random.randint(jax.random.PRNGKey(0), (batch, length), 1, cfg.vocab_size - 1)
  step = jax.jit(make_train_step(graphdef, tx))
  xla_flops = (step.lower(state, {"tokens": toks}).compile().cost_analysis() or {}).get("flops", float("nan"))
  t = time_fn(lambda s, b: step(s, b)[1]["loss"], state, {"tokens": toks}, reps=reps)
  n_params = count_params(model)
  model_flops = 6 * n_params * batch * length
  sec = t["median_s"]
  return {"model": model_type, "length": length, "batch": batch, "params": n_params,
          "tokens_per_s": batch * length / sec, "model_flops_per_step": model_flops,
          "xla_flops_per_step": xla_flops, "mfu": model_flops / sec / peak,
          "xla_flops_utilisation": xla_flops / sec / peak, **t}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lengths", default="1024,4096,16384")
  ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens // length)")
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/train_step.json")
  args = ap.parse_args()
  peak = matmul_peak()
  print(f"matmul peak (2048^3 float32): {peak / 1e9:.1f} GFLOP/s")
  rows = []
  for length in (int(x) for x in args.lengths.split(",")):
    for m in args.models.split(","):
      r = bench(m, length, args.tokens, args.reps, peak)
      rows.append(r)
      print(f"{m:>15} T={length:>6} batch={r['batch']:>3}: {r['tokens_per_s']:>9.0f} tok/s  "
            f"MFU {100 * r['mfu']:.1f}%  XLA-FLOPs {100 * r['xla_flops_utilisation']:.1f}% of peak")
  ratios = cost_ratios(rows)
  write_json(args.out, {"benchmark": "train_step", "machine": machine_info(), "preset": "tiny_cpu",
                        "matmul_peak_flops": peak, "results": rows, "step_time_vs_sliding_window": ratios})


if __name__ == "__main__":
  main()
