"""AOT-compiles the full sharded train step for a TPU topology on this CPU host (needs libtpu).

  JAX_PLATFORMS=cpu python -m launch.aot --experiment=paper_drt_128m --topology=v5e:4x4 \
      [--seq_len=16380] [--batch=32] [--mesh=data=1,fsdp=-1,tensor=1] [--remat=both] \
      [--gca_impl=xla|pallas] [--execution=ce_block=2048,...] [--out=PATH] [--costs_out=PATH]

Params and optimizer state are built abstractly (``nnx.eval_shape`` / ``jax.eval_shape``); no
weight or activation is materialised. Prints per-chip memory (XLA's memory analysis against the
chip's HBM) and XLA's cost estimate, writes JSON to
``benchmarks/results/aot_<experiment>_<topology>.json``, merges one row per variant into the
step-cost table ``benchmarks/results/aot_step_costs.json`` (flops, bytes, a roofline time
estimate, memory, and each model's estimate over the bases'), and exits 1 when no variant fits.
Unlike the rest of ``launch``, this module imports jax.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling only: let several processes (tests, a running job) load libtpu side by side.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from gca_jax import parallel  # noqa: E402
from gca_jax.config import (ConfigError, ExecutionConfig, Experiment, MeshConfig, ModelConfig,  # noqa: E402
                            OptimConfig, apply_overrides)
from gca_jax.train.optim import lr_schedule, make_optimizer  # noqa: E402
from gca_jax.train.state import abstract_state  # noqa: E402
from gca_jax.train.step import make_train_step  # noqa: E402

GiB = 1024 ** 3
# HBM per chip by topology prefix.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5litepod": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
# Dense bf16 peak (flop/s) and HBM bandwidth (bytes/s) per chip (Google Cloud TPU system
# architecture pages), for the roofline estimate of a step.
PEAKS = {"v4": (275e12, 1228e9), "v5e": (197e12, 819e9), "v5litepod": (197e12, 819e9),
         "v5p": (459e12, 2765e9), "v6e": (918e12, 1640e9)}
COSTS_OUT = "benchmarks/results/aot_step_costs.json"


class DoesNotFit(RuntimeError):
  """The compiled train step needs more memory per chip than the chip has."""


@dataclasses.dataclass(frozen=True)
class Run:
  """What to compile: model, optimiser, global batch of ``batch`` x ``seq_len`` raw tokens, mesh."""

  model: ModelConfig
  optim: OptimConfig
  seq_len: int
  batch: int
  mesh: MeshConfig
  steps: int = 1000
  execution: ExecutionConfig = ExecutionConfig()


def resolve_run(name: str, *, seq_len: int | None, batch: int | None, mesh: MeshConfig | None,
                n_chips: int) -> Run:
  """The experiment ``name`` from ``experiments.registry`` (or a model preset), with overrides."""
  try:
    from experiments.registry import get_experiment
  except ImportError:
    get_experiment = None
  if get_experiment is not None:
    exp = get_experiment(name)
    return Run(exp.model, exp.optim, seq_len or exp.data.seq_len, batch or exp.data.batch_size,
               mesh or MeshConfig(data=1, fsdp=-1), exp.train.steps, exp.execution)
  from experiments.presets import model_preset
  return Run(model_preset(name), OptimConfig(), seq_len or 16380, batch or n_chips,
             mesh or MeshConfig(data=1, fsdp=-1))


def parse_mesh(text: str) -> MeshConfig:
  """``data=1,fsdp=-1,tensor=1`` -> MeshConfig (missing axes keep their defaults)."""
  kw = {}
  for part in filter(None, text.split(",")):
    key, _, val = part.partition("=")
    if key not in ("data", "fsdp", "tensor") or not val.lstrip("-").isdigit():
      raise ConfigError(f"--mesh part {part!r}: use data=N,fsdp=N,tensor=N (N > 0 or -1)")
    kw[key] = int(val)
  return MeshConfig(**kw)


def hbm_bytes(topology: str) -> int:
  gen = topology.split(":")[0].lower()
  if gen not in HBM_BYTES:
    raise ConfigError(f"--topology={topology!r}: unknown TPU generation {gen!r}; known: {sorted(HBM_BYTES)}")
  return HBM_BYTES[gen]


def topology_devices(topology: str):
  from jax.experimental import topologies
  try:
    return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
  except Exception as e:  # libtpu's message is long; keep its first line
    if "lockfile" in str(e):
      raise ConfigError(f"libtpu is held by another process: {str(e).splitlines()[0][:300]}") from None
    raise ConfigError(f"--topology={topology!r} is not a TPU topology libtpu knows "
                      f"(e.g. v5e:2x2, v5e:4x4, v5p:4x4x4): {str(e).splitlines()[0][:300]}") from None


def abstract_train(run: Run, mesh):
  """(train_step, sharded abstract TrainState, sharded abstract batch); nothing materialised."""
  tx = make_optimizer(run.optim, run.steps)
  graphdef, _, _, state, _ = abstract_state(run.model, run.execution, 0, mesh, tx)
  batch = {"tokens": jax.ShapeDtypeStruct((run.batch, run.seq_len), jnp.int32,
                                          sharding=parallel.batch_sharding(mesh))}
  step = make_train_step(graphdef, tx, lr_schedule(run.optim, run.steps), grad_accum=run.optim.grad_accum)
  return step, state, batch


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  keys = ("argument", "output", "alias", "temp", "generated_code")
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in keys}
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["generated_code"]
  return out


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  keep = ("flops", "transcendentals", "bytes accessed", "optimal_seconds")
  return {k: float(v) for k, v in cost.items() if k in keep}


def compile_train_step(run: Run, topology: str) -> dict:
  """Lowers and compiles the sharded train step for ``topology``; per-chip memory and cost.

  Raises DoesNotFit (with the figures) when the program needs more than the chip's HBM.
  """
  hbm = hbm_bytes(topology)
  devices = topology_devices(topology)
  mesh = parallel.make_mesh(run.mesh, devices)
  rec = dict(topology=topology, device_kind=devices[0].device_kind, chips=len(devices),
             mesh=dict(mesh.shape), seq_len=run.seq_len, global_batch=run.batch, remat=run.execution.remat,
             gca_impl=run.execution.gca_impl, dtype=run.model.dtype, param_dtype=run.model.param_dtype,
             hbm_bytes=hbm, execution=dataclasses.asdict(run.execution))
  if run.batch % (mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ConfigError(f"--batch={run.batch} must divide over data*fsdp="
                      f"{mesh.shape['data'] * mesh.shape['fsdp']} chips")
  step, state, batch = abstract_train(run, mesh)
  rec["params"] = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  t0 = time.perf_counter()
  try:
    lowered = parallel.jit_train_step(step, state, mesh).lower(state, batch)
    rec["lower_s"] = round(time.perf_counter() - t0, 2)
    compiled = lowered.compile()
  except Exception as e:  # the TPU compiler itself refuses programs that exceed HBM
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      rec["error"] = str(e)[:2000]
      raise DoesNotFit(f"{topology}: the train step does not fit in {hbm / GiB:.1f} GiB HBM per chip "
                       f"(XLA: {_first_line(e)})", rec) from None
    raise
  rec["compile_s"] = round(time.perf_counter() - t0, 2)
  rec["memory"] = _memory(compiled)
  rec["cost"] = _cost(compiled)
  return check_fits(rec)


def check_fits(rec: dict) -> dict:
  """Marks ``rec`` fitting or raises DoesNotFit when its total exceeds the chip's HBM."""
  rec["fits"] = rec["memory"]["total"] <= rec["hbm_bytes"]
  if not rec["fits"]:
    raise DoesNotFit(f"{rec['topology']}: the train step needs {rec['memory']['total'] / GiB:.2f} GiB per "
                     f"chip, more than the {rec['hbm_bytes'] / GiB:.1f} GiB HBM", rec)
  return rec


def _first_line(e: Exception) -> str:
  lines = [ln for ln in str(e).splitlines() if "memory" in ln.lower() or "hbm" in ln.lower()]
  return (lines or str(e).splitlines() or [""])[0][:400]


def describe(rec: dict) -> str:
  """One human-readable block per compiled variant."""
  if "memory" not in rec:
    return f"remat={rec['remat']}: DOES NOT FIT ({rec.get('error', '')[:300]})"
  m, c, g = rec["memory"], rec["cost"], GiB
  return (f"remat={rec['remat']} mesh={rec['mesh']} global_batch={rec['global_batch']} seq_len={rec['seq_len']}\n"
          f"  per chip: args {m['argument'] / g:.2f} GiB, outputs {m['output'] / g:.2f} GiB "
          f"(aliased {m['alias'] / g:.2f}), temps {m['temp'] / g:.2f} GiB, code {m['generated_code'] / g:.3f} GiB"
          f" -> total {m['total'] / g:.2f} / {rec['hbm_bytes'] / g:.0f} GiB HBM "
          f"({'fits' if rec['fits'] else 'DOES NOT FIT'})\n"
          f"  XLA cost per chip: {c.get('flops', 0) / 1e12:.2f} TFLOP, {c.get('bytes accessed', 0) / g:.2f} GiB "
          f"accessed; compile {rec['compile_s']} s")


def remat_policy_of(row: dict) -> str:
  """What ``remat_policy`` means for a compiled variant: "" unless remat with a GCA kernel (the
  only program a policy changes); rows from before the policy existed saved nothing."""
  return (row.get("remat_policy") or "nothing") if row["remat"] and row.get("gca_impl") == "pallas" else ""


def cost_row(experiment: str, rec: dict) -> dict:
  """The step-cost row of one compiled variant: XLA's per-chip flops and bytes, the roofline
  estimate ``max(flops / peak, bytes / HBM bandwidth)`` (modeled, not measured), and memory."""
  peak, bw = PEAKS[rec["topology"].split(":")[0].lower()]
  cost, mem = rec.get("cost", {}), rec.get("memory", {})
  flops, nbytes = cost.get("flops"), cost.get("bytes accessed")
  est = None if flops is None else max(flops / peak, nbytes / bw)
  return dict(experiment=experiment, topology=rec["topology"], chips=rec["chips"], mesh=rec["mesh"],
              global_batch=rec["global_batch"], seq_len=rec["seq_len"], remat=rec["remat"],
              remat_policy=remat_policy_of({**rec, "remat_policy": rec.get("execution", {}).get("remat_policy")}),
              gca_impl=rec.get("gca_impl"), ce_block=rec.get("execution", {}).get("ce_block"), flops=flops, bytes=nbytes, est_seconds=est,
              est_compute_s=None if flops is None else flops / peak,
              est_memory_s=None if nbytes is None else nbytes / bw,
              hbm_gib_per_chip=mem.get("total", 0) / GiB if mem else None, fits=bool(rec.get("fits")))


def record_costs(path: str, rows: list[dict], versions: dict) -> dict:
  """Merges ``rows`` into the step-cost table at ``path`` (one row per experiment, topology,
  batch, length, remat and remat policy; rows from before the policy existed saved nothing)
  and recomputes each model's estimate over the bases' (a base has no GCA kernel, so any of
  its policies)."""
  table = {"rows": []}
  if os.path.exists(path):
    with open(path) as f:
      table = json.load(f)
  for r in [*table["rows"], *rows]:  # rows written before the policy existed carry none
    r["remat_policy"] = remat_policy_of(r)
  ident = lambda r: (r["experiment"], r["topology"], r["global_batch"], r["seq_len"], r["remat"], r["remat_policy"])
  new = {ident(r) for r in rows}
  table["rows"] = [r for r in table["rows"] if ident(r) not in new] + rows
  table["rows"].sort(key=lambda r: (r["topology"], r["global_batch"], r["experiment"], r["remat"],
                                    r["remat_policy"]))
  ratios = {}
  for r in table["rows"]:
    for base in ("paper_base_14l", "paper_base_12l"):
      b = [x for x in table["rows"] if x["experiment"] == base and ident(x)[1:5] == ident(r)[1:5]]
      if r["experiment"] != base and b and r["est_seconds"] and b[0]["est_seconds"]:
        policy = f" ({r['remat_policy']})" if r["remat_policy"] else ""
        key = f"{r['experiment']}{policy} / {base} @ {r['topology']} batch {r['global_batch']} remat {r['remat']}"
        ratios[key] = dict(est_seconds=r["est_seconds"] / b[0]["est_seconds"], flops=r["flops"] / b[0]["flops"])
  table.update(what="Per-chip cost of the sharded train step, AOT-compiled for TPU topologies on a CPU host "
                    "(XLA cost and memory analysis; est_seconds is a roofline model, not a measurement)",
               peaks={k: dict(peak_bf16_flops=v[0], hbm_bytes_per_s=v[1]) for k, v in PEAKS.items()},
               versions=versions, ratios=ratios)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(table, f, indent=1)
  os.replace(path + ".tmp", path)
  return table


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--experiment", required=True)
  ap.add_argument("--topology", required=True, help="e.g. v5e:4x4, v5p:4x4x4")
  ap.add_argument("--seq_len", type=int, default=None, help="raw tokens per sequence")
  ap.add_argument("--batch", type=int, default=None, help="global batch (sequences)")
  ap.add_argument("--mesh", default="", help="data=N,fsdp=N,tensor=N; default fsdp over all chips")
  ap.add_argument("--remat", choices=("off", "on", "both"), default="both")
  ap.add_argument("--gca_impl", choices=("xla", "pallas"), default="xla")
  ap.add_argument("--out", default=None)
  ap.add_argument("--execution", default="", help="ExecutionConfig overrides, e.g. ce_block=1024,retrieval_block=0")
  ap.add_argument("--costs_out", default=COSTS_OUT, help="step-cost table to merge rows into ('' skips)")
  args = ap.parse_args(argv)
  try:
    import libtpu  # noqa: F401
  except ImportError:
    print("launch.aot needs libtpu (pip install libtpu) to compile for TPU on this host", file=sys.stderr)
    return 2
  try:
    devices = topology_devices(args.topology)
    base = resolve_run(args.experiment, seq_len=args.seq_len, batch=args.batch,
                       mesh=parse_mesh(args.mesh) if args.mesh else None, n_chips=len(devices))
  except (ConfigError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  remats = {"off": (False,), "on": (True,), "both": (False, True)}[args.remat]
  try:
    base_exec = apply_overrides(Experiment(execution=base.execution),
                                [f"execution.{x}" for x in args.execution.split(",") if x]).execution
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  results, failed = [], []
  for remat in remats:
    execution = dataclasses.replace(base_exec, remat=remat, gca_impl=args.gca_impl)
    try:
      rec = compile_train_step(dataclasses.replace(base, execution=execution), args.topology)
    except DoesNotFit as e:
      rec = dict(e.args[1], fits=False, message=e.args[0])
      failed.append(e.args[0])
    except ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    results.append(rec)
    print(describe(rec), flush=True)
  from importlib.metadata import version
  report = dict(what="AOT compile of the sharded train step", experiment=args.experiment,
                host=dict(platform=platform.platform(), python=platform.python_version(), cpu_count=os.cpu_count()),
                versions={p: version(p) for p in ("jax", "jaxlib", "libtpu", "flax", "optax")},
                results=results)
  out = args.out or f"benchmarks/results/aot_{args.experiment}_{args.topology.replace(':', '_')}.json"
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {out}")
  if args.costs_out:
    table = record_costs(args.costs_out, [cost_row(args.experiment, r) for r in results], report["versions"])
    print(f"wrote {args.costs_out}: " + "; ".join(f"{k}: {v['est_seconds']:.3f}x" for k, v in table["ratios"].items()))
  if len(failed) == len(results):
    print("error: " + "; ".join(failed), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
