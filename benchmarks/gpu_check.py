"""GPU check of the Triton GCA kernel: correctness vs the XLA path, speed-up, fraction of roofline.

On a CUDA machine, at the paper's per-device shape (B=4, C=259, Q=S=64, H=KH=12, D=64, K=8,
M=260, bf16), times forward+backward of ``gca_attention(impl="xla")`` and of the kernel
(``impl="pallas", platform="gpu"``) in interleaved repetitions (so clock and thermal drift hit
both alike), checks the kernel's output and gradients against the XLA path, and reports

  roofline fraction = cost_model bytes / measured time / the chip's HBM bandwidth

with the targets (>= 70% of roofline, >= 2x the XLA path). One command, a few minutes:

  python benchmarks/gpu_check.py [--reps 10] [--out DIR]     # JSON to $OUT or benchmarks/results/
  python benchmarks/gpu_check.py --dry-run                   # CPU: tiny shape, interpret mode

Exit status: 0 when the kernel matches the XLA path, 1 when it does not or a step fails (the
error goes to the JSON too), 2 when no GPU is visible (without --dry-run). Missing a speed target
is reported, not an error.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import machine_info, write_json  # noqa: E402
from benchmarks.gca_kernel import PAPER, _inputs  # noqa: E402
from benchmarks.gca_kernel_model import xla_cost  # noqa: E402
from pallas_kernels.gca import gca_attention  # noqa: E402
from pallas_kernels.gca.gpu_cost import cost_model  # noqa: E402

TINY = dict(batch=1, n_chunks=3, q_len=16, seq=16, heads=2, kv_heads=1, head_dim=64, top_k=2,
            n_mem=4)
# HBM bandwidth (bytes/s) and dense bf16 peak (flop/s) by device_kind substring, from the
# vendors' data sheets; first match wins, so the specific names come first.
CHIPS = [("h200", 4.8e12, 989e12), ("h100 pcie", 2.0e12, 756e12), ("h100", 3.35e12, 989e12),
         ("a100-sxm4-80gb", 2.04e12, 312e12), ("a100", 1.555e12, 312e12)]
TARGETS = {"roofline_fraction": 0.70, "speedup": 2.0}


def _model_shape(shape: dict) -> dict:
  """``shape`` in the key names of ``benchmarks/gca_kernel_model.py``."""
  keys = dict(b="batch", c="n_chunks", q="q_len", h="heads", d="head_dim", m="n_mem", s="seq",
              kh="kv_heads", k="top_k", itemsize="dtype_bytes")
  return {short: shape[long] for short, long in keys.items()}


def chip_specs(device_kind: str) -> tuple[float, float] | None:
  kind = device_kind.lower()
  return next(((bw, peak) for key, bw, peak in CHIPS if key in kind), None)


def train_fn(impl: str, interpret: bool):
  """jit(value_and_grad) of a scalar loss of the op, in q, k_mem, v_mem and w."""
  kw = {} if impl == "xla" else dict(platform="gpu", interpret=interpret)

  def loss(q, k_mem, v_mem, idx, w):
    out = gca_attention(q, k_mem, v_mem, idx, w, softmax_one=True, impl=impl, **kw)
    return jnp.sum(out.astype(jnp.float32) * q.astype(jnp.float32))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 4)))


def max_rel_errors(got, want) -> dict[str, float]:
  names = ("loss", "dq", "dk", "dv", "dw")
  flat = [got[0], *got[1]], [want[0], *want[1]]
  out = {}
  for name, a, b in zip(names, *flat):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out[name] = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))
  return out


def interleaved(fns: dict, args, reps: int) -> dict[str, list[float]]:
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - t0)
  return times


def run(shape: dict, dtype, reps: int, interpret: bool) -> dict:
  args = _inputs(shape, dtype)
  fns = {"xla": train_fn("xla", interpret), "kernel": train_fn("pallas", interpret)}
  results = {name: jax.block_until_ready(fn(*args)) for name, fn in fns.items()}  # compile
  errors = max_rel_errors(results["kernel"], results["xla"])
  tol = 3e-2 if dtype == jnp.bfloat16 else 1e-4  # both are bf16-rounded differently
  times = interleaved(fns, args, reps)
  med = {name: statistics.median(t) for name, t in times.items()}
  cost_shape = dict(shape, dtype_bytes=jnp.dtype(dtype).itemsize)
  model = cost_model(cost_shape, "fwd+bwd")
  kind = jax.devices()[0].device_kind
  specs = chip_specs(kind)
  record = {
      "shape": shape, "dtype": jnp.dtype(dtype).name, "reps": reps, "interpret": interpret,
      "device_kind": kind, "median_s": med, "times_s": times,
      "speedup": med["xla"] / med["kernel"], "max_rel_error": errors, "tolerance": tol,
      "correct": all(e <= tol for e in errors.values()),
      "model": {"kernel_bytes": model["bytes"], "kernel_flops": model["flops"],
                "kernel_grid_steps": model["grid_steps"],
                "xla_bytes": xla_cost(_model_shape(cost_shape))["fwd+bwd"][0]},
      "targets": TARGETS,
  }
  if specs is not None:
    bw, peak = specs
    record["hbm_bytes_per_s"], record["peak_flops"] = bw, peak
    record["roofline_fraction"] = model["bytes"] / med["kernel"] / bw
    record["modeled_kernel_s"] = (max(model["bytes"] / bw, model["flops"] / peak)
                                  + model["grid_steps"] * model["per_step_s"]
                                  + model["launches"] * model["launch_s"])
    record["meets_targets"] = (record["roofline_fraction"] >= TARGETS["roofline_fraction"]
                               and record["speedup"] >= TARGETS["speedup"])
  return record


def report(rec: dict) -> None:
  med = rec["median_s"]
  print(f"device {rec['device_kind']}  shape {rec['shape']}  {rec['dtype']}")
  print(f"fwd+bwd median: xla {med['xla'] * 1e3:.3f} ms, kernel {med['kernel'] * 1e3:.3f} ms, "
        f"speed-up {rec['speedup']:.2f}x (target >= {TARGETS['speedup']}x)")
  if "roofline_fraction" in rec:
    print(f"roofline: {rec['model']['kernel_bytes'] / 1e9:.3f} GB modeled at "
          f"{rec['hbm_bytes_per_s'] / 1e12:.2f} TB/s -> {rec['roofline_fraction']:.1%} "
          f"(target >= {TARGETS['roofline_fraction']:.0%}); modeled kernel time "
          f"{rec['modeled_kernel_s'] * 1e3:.3f} ms")
  else:
    print("roofline: no bandwidth known for this device kind (see CHIPS)")
  errs = ", ".join(f"{k} {v:.1e}" for k, v in rec["max_rel_error"].items())
  print(f"kernel vs xla max relative error: {errs} -> {'OK' if rec['correct'] else 'MISMATCH'}")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--dry-run", action="store_true",
                  help="no GPU: tiny shape, the kernel in interpret mode (checks this script)")
  ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results"))
  args = ap.parse_args(argv)
  if not args.dry_run and jax.default_backend() != "gpu":
    print(f"gpu_check: no CUDA GPU visible to JAX (backend {jax.default_backend()!r}, devices "
          f"{jax.devices()}); run it on a GPU machine with jax[cuda], or pass --dry-run to check "
          "the script on this host in interpret mode", file=sys.stderr)
    return 2
  shape, dtype = (TINY, jnp.float32) if args.dry_run else (PAPER, jnp.bfloat16)
  name = "gpu_check_dry_run.json" if args.dry_run else "gpu_check.json"
  try:
    rec = run(shape, dtype, max(1, args.reps if not args.dry_run else 2), interpret=args.dry_run)
  except Exception as e:  # e.g. the Triton compile on this GPU: record it, say so, fail
    rec = {"shape": shape, "error": f"{type(e).__name__}: {e}"[:4000], "correct": False}
    print(f"gpu_check: the run failed: {rec['error'][:1000]}", file=sys.stderr)
  else:
    report(rec)
  rec["machine"] = machine_info()
  write_json(os.path.join(args.out, name), rec)
  return 0 if rec["correct"] else 1


if __name__ == "__main__":
  sys.exit(main())
