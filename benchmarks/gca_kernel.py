"""Times ``gca_attention(impl="xla")`` forward and forward+backward at the paper shape on this host.

Bandwidth is "useful bytes" (picked K/V chunks + q + out) over time: the bytes a fused kernel
must move at least, so it compares implementations rather than measuring DRAM. The Pallas
kernels are not timed here (interpret mode on a CPU says nothing about TPU speed): their TPU
figures are XLA's cost-model estimate from ``benchmarks/gca_kernel_aot.py`` and the roofline
model of ``benchmarks/gca_kernel_model.py``, copied into the report (no TPU was used).

  python benchmarks/gca_kernel.py [--batch 1] [--out benchmarks/results/gca_kernel_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pallas_kernels.gca import gca_attention  # noqa: E402

# Per device in the paper's training step: 4 rows x 259 query chunks; Q=S=64; H=KH=12; D=64;
# K=8 picks among M=260 memory chunks.
PAPER = dict(batch=4, n_chunks=259, q_len=64, seq=64, heads=12, kv_heads=12, head_dim=64,
             top_k=8, n_mem=260)


def _inputs(p, dtype):
  rng = np.random.default_rng(0)
  b, c, m = p["batch"], p["n_chunks"], p["n_mem"]
  q = jnp.asarray(rng.standard_normal((b, c, p["q_len"], p["heads"], p["head_dim"])), dtype)
  mem = lambda: jnp.asarray(rng.standard_normal((b, m, p["seq"], p["kv_heads"], p["head_dim"])),
                            dtype)
  idx = jnp.asarray(rng.integers(0, m, (b, c, p["top_k"])), jnp.int32)
  w = jax.nn.softmax(jnp.asarray(rng.standard_normal((b, c, p["top_k"])), jnp.float32), -1)
  return q, mem(), mem(), idx, w


def _time(fn, args, reps):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return float(np.median(ts)), [round(t, 4) for t in ts]


def bench(p, dtype, reps):
  q, k, v, idx, w = _inputs(p, dtype)
  item = jnp.dtype(dtype).itemsize
  picked = p["batch"] * p["n_chunks"] * p["top_k"] * p["seq"] * p["kv_heads"] * p["head_dim"]
  useful = 2 * picked * item + 2 * q.size * item  # picked K and V, q, out
  flops = 4 * p["batch"] * p["n_chunks"] * p["top_k"] * p["heads"] * p["q_len"] * p["seq"] * p["head_dim"]
  fwd = jax.jit(lambda q, k, v, w: gca_attention(q, k, v, idx, w, impl="xla"))
  loss = lambda q, k, v, w: jnp.sum(gca_attention(q, k, v, idx, w, impl="xla").astype(jnp.float32))
  fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  out = {}
  for name, fn, mult in (("forward", fwd, 1), ("forward_backward", fwd_bwd, 3.5)):
    t, ts = _time(fn, (q, k, v, w), reps)
    out[name] = dict(median_s=round(t, 4), runs_s=ts, useful_bytes=int(useful),
                     useful_gb_per_s=round(useful / t / 1e9, 3),
                     model_flops=int(flops * mult), gflop_per_s=round(flops * mult / t / 1e9, 2))
  return out


def _tpu_estimate(path):
  if not os.path.exists(path):
    return {"note": f"{path} missing: run benchmarks/gca_kernel_aot.py (needs libtpu)"}
  with open(path) as f:
    rep = json.load(f)
  return {f"{r['topology']} {'fwd+bwd' if r['backward'] else 'fwd'}":
          dict(r.get("cost", {}), ok=r["ok"]) for r in rep["results"]}


def _model_summary(path):
  if not os.path.exists(path):
    return {"note": f"{path} missing: run benchmarks/gca_kernel_model.py"}
  with open(path) as f:
    return dict(json.load(f)["summary"], note="modeled, not measured")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1, help="rows per step (paper: 4 per device)")
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/gca_kernel_cpu.json")
  args = parser.parse_args()
  p = dict(PAPER, batch=args.batch)
  from importlib.metadata import version
  report = dict(
      what="gca_attention impl='xla' at the paper shape (per device), this host",
      shape=p,
      note=(f"batch reduced from the paper's 4 to {args.batch} to keep the CPU run short; "
            "times scale ~linearly in batch") if args.batch != PAPER["batch"] else "paper shape",
      bandwidth_bytes="picked K and V chunks + q + out, at the input dtype",
      forward_backward_flops="3.5x forward (forward recomputed under remat + 2 backward matmuls per forward one)",
      machine=dict(platform=platform.platform(), processor=platform.processor(),
                   cpu_count=os.cpu_count(), backend=jax.default_backend(),
                   devices=[str(d) for d in jax.devices()]),
      versions=dict(python=platform.python_version(), jax=jax.__version__,
                    jaxlib=version("jaxlib"), numpy=np.__version__),
      results={},
      tpu_cost_model=_tpu_estimate("benchmarks/results/gca_kernel_tpu_aot.json"),
      kernel_roofline_model=_model_summary("benchmarks/results/gca_kernel_model.json"))
  for dt in (jnp.float32, jnp.bfloat16):
    report["results"][jnp.dtype(dt).name] = bench(p, dt, args.reps)
    print(jnp.dtype(dt).name, json.dumps(report["results"][jnp.dtype(dt).name]))
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
