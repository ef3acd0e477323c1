"""Tokens/s of a jitted forward+backward pass: DRT vs sliding-window vs full attention.

All models use the tiny preset's blocks. The sliding-window and full-attention baselines have
``lower_layers + sum(upper_layers)`` layers (the authors' equal-depth comparison; DRT adds its
chunk encoder on top). Batch x length is held at ``--tokens`` per step.

python benchmarks/forward_backward.py [--lengths=1024,4096,16384] [--out=benchmarks/results/forward_backward.json]
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
from gca_jax.model import build_model, count_params  # noqa: E402
from gca_jax.train.step import loss_fn  # noqa: E402

MODELS = ("drt", "sliding_window", "full_attention")


def bench(model_type: str, length: int, tokens: int, reps: int) -> dict:
  cfg = dataclasses.replace(MODEL_PRESETS["tiny_cpu"], model_type=model_type)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = max(1, tokens // length)
  toks = jax.random.randint(jax.random.PRNGKey(0), (batch, length), 1, cfg.vocab_size - 1)
  grad = jax.jit(jax.value_and_grad(lambda p, x: loss_fn(p, graphdef, {"tokens": x}, jax.random.PRNGKey(1),
                                                         train=True)[0]))
  t = time_fn(grad, params, toks, reps=reps)
  return {"model": model_type, "length": length, "batch": batch, "params": count_params(model),
          "tokens_per_s": batch * length / t["median_s"], **t}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lengths", default="1024,4096,16384")
  ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens // length)")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default="benchmarks/results/forward_backward.json")
  args = ap.parse_args()
  rows = []
  for length in (int(x) for x in args.lengths.split(",")):
    for m in MODELS:
      r = bench(m, length, args.tokens, args.reps)
      rows.append(r)
      print(f"{m:>15} T={length:>6} batch={r['batch']:>3}: {r['tokens_per_s']:>9.0f} tok/s "
            f"(step {r['median_s']:.3f}s, compile+first {r['first_call_s']:.1f}s)")
  ratios = cost_ratios(rows)
  write_json(args.out, {"benchmark": "forward_backward", "machine": machine_info(), "preset": "tiny_cpu",
                        "results": rows, "cost_vs_sliding_window": ratios})


if __name__ == "__main__":
  main()
