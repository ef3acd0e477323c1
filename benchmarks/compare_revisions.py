"""Train-step time at two revisions (or a revision and this tree), interleaved step by step in one process.

The revisions' ``gca_jax``, ``pallas_kernels`` and ``experiments`` are extracted with
``git archive`` into temporary folders under the names ``*_base`` / ``*_head`` (imports
rewritten), so both versions live in one process; their jitted train steps are then timed alternately, one step of
each per round, so machine drift (other jobs on the cores) hits both alike. Same preset, same
tokens, same optimiser.

  python benchmarks/compare_revisions.py --base=f4b3e93 [--head=REV] [--lengths=1024,16384] [--rounds=15] \
      [--models=drt,sliding_window] [--out=benchmarks/results/compare_revisions.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402

from benchmarks.common import machine_info, write_json  # noqa: E402

PACKAGES = ("gca_jax", "pallas_kernels", "experiments")


def extract_revision(rev: str, suffix: str) -> str:
  """A revision's packages renamed ``<name><suffix>`` in a temp folder (added to sys.path)."""
  root = tempfile.mkdtemp(prefix="gca_base_")
  archive = os.path.join(root, "base.tar")
  subprocess.run(["git", "archive", "-o", archive, rev, *PACKAGES], cwd=REPO, check=True)
  with tarfile.open(archive) as tar:
    tar.extractall(root, filter="data")
  pattern = re.compile(r"\b(" + "|".join(PACKAGES) + r")\b")
  for pkg in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(root, pkg)):
      for name in files:
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          with open(path) as f:
            text = f.read()
          with open(path, "w") as f:
            f.write(pattern.sub(r"\1" + suffix, text))
    os.rename(os.path.join(root, pkg), os.path.join(root, pkg + suffix))
  sys.path.insert(0, root)
  return root


def make_step(prefix: str, model_type: str, length: int, tokens: int):
  """(jitted step, state, batch) of the tiny preset built by the ``prefix`` packages."""
  presets = importlib.import_module(f"experiments{prefix}.presets")
  model_mod = importlib.import_module(f"gca_jax{prefix}.model")
  config = importlib.import_module(f"gca_jax{prefix}.config")
  optim = importlib.import_module(f"gca_jax{prefix}.train.optim")
  step_mod = importlib.import_module(f"gca_jax{prefix}.train.step")
  from flax import nnx
  cfg = dataclasses.replace(presets.MODEL_PRESETS["tiny_cpu"], model_type=model_type)
  model = model_mod.build_model(cfg, rngs=nnx.Rngs(0))
  tx = optim.make_optimizer(config.OptimConfig(), 1000)
  # init_state moved from train.step to train.state in the refactor: take it where it lives.
  init_state = getattr(step_mod, "init_state", None) or importlib.import_module(
      f"gca_jax{prefix}.train.state").init_state
  graphdef, state = init_state(model, tx, 0)
  batch = {"tokens": jax.random.randint(jax.random.PRNGKey(0), (max(1, tokens // length), length), 1,
                                        cfg.vocab_size - 1)}
  step = jax.jit(step_mod.make_train_step(graphdef, tx))
  jax.block_until_ready(step(state, batch))  # compile
  return step, state, batch


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--base", required=True)
  ap.add_argument("--head", default="", help="a revision to compare (default: this working tree)")
  ap.add_argument("--lengths", default="1024,16384")
  ap.add_argument("--models", default="drt,sliding_window")
  ap.add_argument("--tokens", type=int, default=16384)
  ap.add_argument("--rounds", type=int, default=15)
  ap.add_argument("--out", default="benchmarks/results/compare_revisions.json")
  args = ap.parse_args()
  extract_revision(args.base, "_base")
  head_prefix = ""
  if args.head:
    extract_revision(args.head, "_head")
    head_prefix = "_head"
  rows = []
  for length in (int(x) for x in args.lengths.split(",")):
    for model_type in args.models.split(","):
      sides = {side: make_step(prefix, model_type, length, args.tokens)
               for side, prefix in (("base", "_base"), ("head", head_prefix))}
      times = {"base": [], "head": []}
      for _ in range(args.rounds):
        for side, (step, state, batch) in sides.items():
          t0 = time.perf_counter()
          jax.block_until_ready(step(state, batch)[1]["loss"])
          times[side].append(time.perf_counter() - t0)
      row = {"model": model_type, "length": length, "tokens_per_step": args.tokens,
             "base_times_s": times["base"], "head_times_s": times["head"],
             "base_min_s": min(times["base"]), "head_min_s": min(times["head"]),
             "base_median_s": statistics.median(times["base"]),
             "head_median_s": statistics.median(times["head"]),
             "head_over_base_median_of_ratios": statistics.median(
                 h / b for h, b in zip(times["head"], times["base"]))}
      rows.append(row)
      print(f"{model_type:>15} T={length:>6}: base {row['base_median_s']:.3f}s head {row['head_median_s']:.3f}s "
            f"(median of per-round ratios head/base {row['head_over_base_median_of_ratios']:.3f}; "
            f"load {os.getloadavg()[0]:.1f})", flush=True)
      del sides
  head = args.head or "working tree at " + subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
  write_json(args.out, {"benchmark": "train step, this checkout vs a base revision, interleaved per step",
                        "base": args.base, "head": head, "preset": "tiny_cpu", "machine": machine_info(),
                        "load_avg_end": os.getloadavg(), "results": rows})


if __name__ == "__main__":
  main()
