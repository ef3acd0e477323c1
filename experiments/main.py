"""Entry point: ``python -m experiments.main --experiment=NAME --workdir=DIR [--set=k=v ...]``.

``--sweep=NAME`` runs a registered sweep's runs one after another, each in ``DIR/<run_name>``
(the ``--set`` values apply to every run), then writes the sweep report
``DIR/sweep_<NAME>.{json,md,png}`` (``experiments.aggregate``); ``--mode=aggregate`` only writes
the report. ``--dry_run`` lists the runs (name, experiment, overrides, workdir) and writes nothing.

Everything the user typed (experiment, ``--set`` overrides, ``--mode``) is checked before
anything is written. Rerunning the same command resumes from the workdir's last checkpoint.
Modes live in ``MODES`` (mode -> function(exp, workdir) returning a summary dict); the
evaluation modes are added there by ``gca_jax.evals``.

Multi-host: with ``GCA_JAX_DISTRIBUTED=1`` the process first calls
``jax.distributed.initialize`` (``GCA_COORDINATOR_ADDRESS``, ``GCA_NUM_PROCESSES``,
``GCA_PROCESS_ID`` when set; otherwise JAX's cluster auto-detection).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable

from absl import app, flags, logging

from gca_jax.evals import cli as eval_cli
from gca_jax.flagdefs import define

_EXPERIMENT = define("string", "experiment", None, "Registered experiment name.")
_WORKDIR = define("string", "workdir", None, "Run folder: checkpoints, metrics, experiment.json.")
_SET = define("multi_string", "set", [], "Override section.field=value (repeatable).")
_SWEEP = define("string", "sweep", None, "Registered sweep: run each of its runs in turn.")
_MODE = define("string", "mode", "train", "What to do with the experiment (see MODES).")
_DRY_RUN = define("bool", "dry_run", False, "List the runs (and their workdirs), then exit.")
_LIST = flags.DEFINE_bool("list", False, "List registered experiments and sweeps, then exit.")


def _train(exp, workdir: str) -> dict:
  from gca_jax.train.loop import train
  return train(exp, workdir)


# mode -> fn(exp, workdir) -> summary dict.
MODES: dict[str, Callable[..., dict]] = {"train": _train, **eval_cli.MODES}
# Modes that may take the experiment from <workdir>/experiment.json instead of --experiment.
READS_WORKDIR = frozenset(eval_cli.MODES)
AGGREGATE = "aggregate"  # --sweep only: the sweep report from the runs' files, no experiment runs


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize`` from GCA_* environment variables, if requested."""
  if os.environ.get("GCA_JAX_DISTRIBUTED") != "1":
    return
  import jax
  kw = {}
  if os.environ.get("GCA_COORDINATOR_ADDRESS"):
    kw["coordinator_address"] = os.environ["GCA_COORDINATOR_ADDRESS"]
  if os.environ.get("GCA_NUM_PROCESSES"):
    kw["num_processes"] = int(os.environ["GCA_NUM_PROCESSES"])
  if os.environ.get("GCA_PROCESS_ID"):
    kw["process_id"] = int(os.environ["GCA_PROCESS_ID"])
  jax.distributed.initialize(**kw)


def resolve(name: str | None, overrides: list[str], mode: str):
  """The validated Experiment, or a ConfigError listing what is valid (nothing is written)."""
  from experiments.registry import get_experiment, list_experiments
  from gca_jax.config import ConfigError, apply_overrides
  if mode not in MODES:
    raise ConfigError(f"--mode={mode!r} is unknown; valid modes: {sorted(MODES)} "
                      f"(and {AGGREGATE!r} with --sweep)")
  if not name and mode in READS_WORKDIR and _WORKDIR.value:
    return apply_overrides(eval_cli.load_experiment(_WORKDIR.value), list(overrides))
  if not name:
    raise ConfigError(f"--experiment is required; registered experiments: {list_experiments()}")
  return apply_overrides(get_experiment(name), list(overrides))


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  maybe_initialize_distributed()
  from experiments import registry
  from gca_jax.config import ConfigError
  if _LIST.value:
    print("experiments:", " ".join(registry.list_experiments()))
    print("sweeps:", " ".join(registry.list_sweeps()))
    return 0
  try:
    if _SWEEP.value and _EXPERIMENT.value:
      raise ConfigError("pass --experiment or --sweep, not both")
    if _MODE.value == AGGREGATE and not _SWEEP.value:
      raise ConfigError(f"--mode={AGGREGATE} needs --sweep; registered sweeps: "
                        f"{registry.list_sweeps()}")
    mode = "train" if _MODE.value == AGGREGATE else _MODE.value
    if _SWEEP.value:  # every run is resolved (and so checked) before the first one starts
      sweep = registry.expand_sweep(_SWEEP.value)
      runs = [(resolve(r.experiment, [*r.overrides, *_SET.value], mode), r.run_name)
              for r in sweep]
    else:
      sweep = [registry.SweepRun(_EXPERIMENT.value or "", [], "")]
      runs = [(resolve(_EXPERIMENT.value, _SET.value, mode), "")]
  except (ConfigError, eval_cli.EvalError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not _WORKDIR.value:
    print("error: --workdir is required", file=sys.stderr)
    return 2
  if os.path.isfile(_WORKDIR.value):
    print(f"error: --workdir={_WORKDIR.value} is an existing file; pass a folder (it is created "
          "if missing)", file=sys.stderr)
    return 2
  if _DRY_RUN.value:
    _print_runs(sweep, _SET.value, _WORKDIR.value)
    return 0
  if _MODE.value == AGGREGATE:
    return _aggregate(sweep)
  from gca_jax.checkpoint import CheckpointError
  from gca_jax.train.loop import NonFiniteLossError
  rc = 0
  for exp, sub in runs:
    try:
      MODES[_MODE.value](exp, os.path.join(_WORKDIR.value, sub) if sub else _WORKDIR.value)
    except (CheckpointError, NonFiniteLossError, ConfigError, ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      rc = 1
      break
  if _SWEEP.value and _is_main_process():  # the runs not reached show as "not run"
    rc = _aggregate(sweep) or rc
  return rc


def _print_runs(sweep, sets: list[str], workdir: str) -> None:
  """One tab-separated line per run: name, experiment, workdir, overrides (shell-quoted)."""
  head = f"# mode={_MODE.value} runs={len(sweep)}"
  print(head + (f" sweep={_SWEEP.value}" if _SWEEP.value else ""))
  print("run\texperiment\tworkdir\toverrides")
  for r in sweep:
    ov = " ".join(shlex.quote(o) for o in [*r.overrides, *sets])
    wd = os.path.join(workdir, r.run_name) if r.run_name else workdir
    print(f"{r.run_name or r.experiment}\t{r.experiment}\t{wd}\t{ov}")


def _is_main_process() -> bool:
  if os.environ.get("GCA_JAX_DISTRIBUTED") != "1":
    return True
  import jax
  return jax.process_index() == 0


def _aggregate(sweep) -> int:
  """Writes ``DIR/sweep_<NAME>.{json,md,png}`` and prints the Markdown table."""
  from experiments import aggregate
  try:
    rows = aggregate.collect(_WORKDIR.value, sweep)
    paths = aggregate.write(_WORKDIR.value, _SWEEP.value, rows)
  except OSError as e:
    print(f"error: cannot write the sweep report: {e}", file=sys.stderr)
    return 1
  print(aggregate.markdown(_SWEEP.value, rows))
  print("sweep report:", " ".join(paths.values()))
  return 0


if __name__ == "__main__":
  app.run(main)
