"""Step time, tokens/s and CPU model-FLOPs utilisation of the tiny train step: DRT against two
sliding-window baselines at several lengths, timed interleaved (A/B) so machine drift cancels.

Baselines: ``sliding_window`` has DRT's lower + upper layers (the paper's "base");
``sliding_window_equal`` has as many decoder layers as DRT runs in all, lower + upper +
encoder (the paper's "+2 layers" LM at 128M). Every model is compiled first, then the timed
calls go round-robin (one step of each model per round), and each ratio is the median over
rounds of DRT's time over the baseline's time in the same round.

MFU = model FLOPs per second / matmul peak, both measured in this run (the peak is the best
of a large float32 matmul with the same XLA backend, timed before and after); model FLOPs are
6 x parameters x tokens (the usual MFU convention), and XLA's own estimate of the compiled
step (``cost_analysis``; loops are counted once) is reported beside it.

python benchmarks/train_step.py [--lengths=1024,16384] [--rounds=7] [--execution=retrieval_block=64,...]
    [--xla_options=tuned|default|key=value;...] [--out=benchmarks/results/train_step.json]

Compiled with ``execution.cpu_compiler_options`` (``--xla_options``, default "tuned", as training).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks.common import machine_info, write_json  # noqa: E402
from experiments.presets import MODEL_PRESETS  # noqa: E402
from gca_jax.config import ExecutionConfig, Experiment, OptimConfig, apply_overrides  # noqa: E402
from gca_jax.model import build_model, count_params  # noqa: E402
from gca_jax.train.optim import make_optimizer  # noqa: E402
from gca_jax.train.state import init_state  # noqa: E402
from gca_jax.train.step import make_train_step  # noqa: E402

MODELS = ("drt", "sliding_window", "sliding_window_equal")
BASELINES = ("sliding_window", "sliding_window_equal")


def model_config(name: str, preset: str = "tiny_cpu"):
  """The DRT preset, or a sliding-window LM of its lower + upper (``sliding_window``) or lower
  + upper + encoder (``sliding_window_equal``) layers."""
  drt = MODEL_PRESETS[preset]
  if name == "drt":
    return drt
  extra = drt.encoder_layers if name == "sliding_window_equal" else 0
  return dataclasses.replace(drt, model_type="sliding_window", lower_layers=drt.lower_layers + extra)


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of an n x n float32 matmul under XLA on this backend (the best of ``reps``)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(mm(a, a))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(mm(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


@dataclasses.dataclass
class Prepared:
  """One compiled train step, its inputs and its static facts."""

  name: str
  step: object
  state: object
  batch: dict
  row: dict


def prepare(name: str, length: int, tokens: int, execution: ExecutionConfig) -> Prepared:
  """Compiles the train step of ``name`` with ``execution`` (its compiler options included)."""
  cfg = model_config(name)
  model = build_model(cfg, rngs=nnx.Rngs(0), execution=execution)
  tx = make_optimizer(OptimConfig(), 1000)
  graphdef, state = init_state(model, tx, 0)
  b = max(1, tokens // length)
  batch = {"tokens": jax.random.randint(jax.random.PRNGKey(0), (b, length), 1, cfg.vocab_size - 1)}
  t0 = time.perf_counter()
  options = execution.compiler_options(jax.default_backend())
  compiled = jax.jit(make_train_step(graphdef, tx)).lower(state, batch).compile(options or None)
  cost = compiled.cost_analysis() or {}
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  n_params = count_params(model)
  row = {"model": name, "length": length, "batch": b, "params": n_params,
         "layers": cfg.num_layers + (cfg.encoder_layers if cfg.model_type == "drt" else 0),
         "compile_s": time.perf_counter() - t0, "model_flops_per_step": 6 * n_params * b * length,
         "xla_flops_per_step": float(cost.get("flops", float("nan")))}
  jax.block_until_ready(compiled(state, batch))  # warm-up
  return Prepared(name, compiled, state, batch, row)


def time_round_robin(prepared: list[Prepared], rounds: int) -> dict[str, list[float]]:
  """Seconds per step of each model, one call of each per round, in turn."""
  times = {p.name: [] for p in prepared}
  for r in range(rounds):
    order = prepared if r % 2 == 0 else prepared[::-1]  # alternate who goes first
    for p in order:
      t0 = time.perf_counter()
      jax.block_until_ready(p.step(p.state, p.batch))
      times[p.name].append(time.perf_counter() - t0)
  return times


def run_length(length: int, tokens: int, rounds: int, models, execution, peak: float):
  prepared = [prepare(m, length, tokens, execution) for m in models]
  load0 = os.getloadavg()
  times = time_round_robin(prepared, rounds)
  load1 = os.getloadavg()
  rows = []
  for p in prepared:
    sec = statistics.median(times[p.name])
    rows.append({**p.row, "median_s": sec, "times_s": times[p.name], "tokens_per_s": p.row["batch"] * length / sec,
                 "mfu": p.row["model_flops_per_step"] / sec / peak,
                 "xla_flops_utilisation": p.row["xla_flops_per_step"] / sec / peak})
  ratios = {}
  if "drt" in times:
    for base in (m for m in BASELINES if m in times):
      per_round = [a / b for a, b in zip(times["drt"], times[base])]
      ratios[base] = {"median": statistics.median(per_round), "per_round": per_round}
  return rows, ratios, {"before": load0, "after": load1}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--lengths", default="1024,16384")
  ap.add_argument("--tokens", type=int, default=16384, help="tokens per step (batch = tokens // length)")
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--execution", default="", help="ExecutionConfig overrides, e.g. retrieval_block=0,remat=true")
  ap.add_argument("--xla_options", default="tuned",
                  help="execution.cpu_compiler_options: 'tuned', 'default' or xla_cpu_key=value;...")
  ap.add_argument("--out", default="benchmarks/results/train_step.json")
  args = ap.parse_args(argv)
  execution = apply_overrides(Experiment(), [f"execution.{x}" for x in args.execution.split(",") if x]).execution
  execution = dataclasses.replace(execution, cpu_compiler_options=args.xla_options)
  options = execution.compiler_options(jax.default_backend())
  peak0 = matmul_peak()
  print(f"matmul peak (2048^3 float32): {peak0 / 1e9:.1f} GFLOP/s; load {os.getloadavg()}", flush=True)
  all_rows, all_ratios, loads = [], {}, {}
  for length in (int(x) for x in args.lengths.split(",")):
    rows, ratios, load = run_length(length, args.tokens, args.rounds, args.models.split(","), execution, peak0)
    all_rows += rows
    all_ratios[str(length)], loads[str(length)] = {k: v["median"] for k, v in ratios.items()}, load
    for r in rows:
      print(f"{r['model']:>21} T={length:>6} batch={r['batch']:>3}: {r['median_s']:.3f} s  "
            f"{r['tokens_per_s']:>8.0f} tok/s  MFU {100 * r['mfu']:.1f}%  XLA-FLOPs "
            f"{100 * r['xla_flops_utilisation']:.1f}%", flush=True)
    print(f"T={length}: DRT / " + ", ".join(f"{k} {v['median']:.3f}x" for k, v in ratios.items())
          + f"  (load {load['before'][0]:.2f} -> {load['after'][0]:.2f})", flush=True)
  peak1 = matmul_peak()
  lengths = sorted(all_ratios, key=int)
  growth = {b: all_ratios[lengths[-1]][b] / all_ratios[lengths[0]][b]
            for b in all_ratios[lengths[0]] if len(lengths) > 1 and b in all_ratios[lengths[-1]]}
  print(f"ratio growth {lengths[0]} -> {lengths[-1]}: {growth}; matmul peak after: {peak1 / 1e9:.1f} GFLOP/s")
  write_json(args.out, {
      "benchmark": "train_step", "machine": machine_info(), "preset": "tiny_cpu",
      "execution": dataclasses.asdict(execution), "compiler_options": options, "tokens_per_step": args.tokens, "rounds": args.rounds,
      "matmul_peak_flops": peak0, "matmul_peak_flops_after": peak1, "load_average": loads,
      "results": all_rows, "drt_step_time_over": all_ratios, "ratio_growth": growth,
      "command": "python benchmarks/train_step.py " + " ".join(argv if argv is not None else sys.argv[1:])})


if __name__ == "__main__":
  main()
