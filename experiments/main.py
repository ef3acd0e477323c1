"""Entry point: ``python -m experiments.main --experiment=NAME --workdir=DIR [--set=k=v ...]``.

``--sweep=NAME`` runs a registered sweep's runs one after another, each in ``DIR/<run_name>``
(the ``--set`` values apply to every run).

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
_LIST = flags.DEFINE_bool("list", False, "List registered experiments and sweeps, then exit.")


def _train(exp, workdir: str) -> dict:
  from gca_jax.train.loop import train
  return train(exp, workdir)


# mode -> fn(exp, workdir) -> summary dict.
MODES: dict[str, Callable[..., dict]] = {"train": _train, **eval_cli.MODES}
# Modes that may take the experiment from <workdir>/experiment.json instead of --experiment.
READS_WORKDIR = frozenset(eval_cli.MODES)


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
    raise ConfigError(f"--mode={mode!r} is unknown; valid modes: {sorted(MODES)}")
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
    if _SWEEP.value:  # every run is resolved (and so checked) before the first one starts
      runs = [(resolve(r.experiment, [*r.overrides, *_SET.value], _MODE.value), r.run_name)
              for r in registry.expand_sweep(_SWEEP.value)]
    else:
      runs = [(resolve(_EXPERIMENT.value, _SET.value, _MODE.value), "")]
  except (ConfigError, eval_cli.EvalError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not _WORKDIR.value:
    print("error: --workdir is required", file=sys.stderr)
    return 2
  from gca_jax.checkpoint import CheckpointError
  from gca_jax.train.loop import NonFiniteLossError
  for exp, sub in runs:
    try:
      MODES[_MODE.value](exp, os.path.join(_WORKDIR.value, sub) if sub else _WORKDIR.value)
    except (CheckpointError, NonFiniteLossError, ConfigError, ValueError, FileNotFoundError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  app.run(main)
