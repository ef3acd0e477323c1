"""GPU multi-node recipe: writes an sbatch script that runs experiments.main on every node.

  python -m launch.slurm --nodes=2 --gpus_per_node=8 --experiment=NAME --workdir=DIR \\
      [--set=k=v ...] [--output=job.sbatch] [--submit] [-- extra program args]

One task per node sees all its GPUs. The first node of the allocation is the coordinator; each
task gets GCA_JAX_DISTRIBUTED=1, GCA_COORDINATOR_ADDRESS, GCA_NUM_PROCESSES and GCA_PROCESS_ID,
which the program hands to `jax.distributed.initialize()`.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

from absl import app, flags

from gca_jax.flagdefs import define

from launch import remote
from launch.errors import LaunchError

_NODES = flags.DEFINE_integer("nodes", None, "Number of nodes.")
_GPUS = flags.DEFINE_integer("gpus_per_node", None, "GPUs per node.")


_EXPERIMENT = define("string", "experiment", None, "Registered experiment name.")
_WORKDIR = define("string", "workdir", None, "Run directory (shared filesystem or gs://).")
_SET = define("multi_string", "set", [], "Config override key=value.")
_ENV = define("multi_string", "env", [], "KEY=VALUE exported on every node.")
_JOB = flags.DEFINE_string("job_name", "gca-jax", "Slurm job name.")
_PARTITION = flags.DEFINE_string("partition", None, "Slurm partition.")
_ACCOUNT = flags.DEFINE_string("account", None, "Slurm account.")
_TIME = flags.DEFINE_string("time", None, "Time limit, e.g. 24:00:00.")
_CPUS = flags.DEFINE_integer("cpus_per_task", None, "CPUs per task (one task per node).")
_PORT = flags.DEFINE_integer("port", 12355, "Coordinator port on the first node.")
_PYTHON = flags.DEFINE_string("python", "python", "Python on the nodes (e.g. a venv's bin/python).")
_CHDIR = flags.DEFINE_string("chdir", None, "Directory to run in (default: the submit directory).")
_OUTPUT = flags.DEFINE_string("output", "-", "Where to write the script ('-': stdout).")
_SUBMIT = flags.DEFINE_bool("submit", False, "Run `sbatch` on the written script.")

_DIRECTIVE = re.compile(r"^[A-Za-z0-9_.:@%/+=,-]+$")


def render(*, nodes: int, gpus_per_node: int, experiment: str, workdir: str,
           sets: list[str] = (), env: list[tuple[str, str]] = (), extra: list[str] = (),
           job_name: str = "gca-jax", partition: str | None = None, account: str | None = None,
           time: str | None = None, cpus_per_task: int | None = None, port: int = 12355,
           python: str = "python", chdir: str | None = None) -> str:
  """The sbatch script text; every user value in shell context is shlex-quoted."""
  if nodes < 1 or gpus_per_node < 1:
    raise LaunchError(f"--nodes={nodes} and --gpus_per_node={gpus_per_node} must both be >= 1")
  if not 0 < port < 65536:
    raise LaunchError(f"--port={port} is not a TCP port")
  directives = {"job-name": job_name, "nodes": nodes, "ntasks-per-node": 1,
                "gpus-per-node": gpus_per_node, "partition": partition, "account": account,
                "time": time, "cpus-per-task": cpus_per_task, "output": "%x-%j.out"}
  lines = ["#!/bin/bash"]
  for key, value in directives.items():
    if value is None:
      continue
    if not _DIRECTIVE.match(str(value)):
      raise LaunchError(f"--{key.replace('-', '_')}={value!r}: use letters, digits and .:@%/+=,_-")
    lines.append(f"#SBATCH --{key}={value}")
  program = [python, "-m", "experiments.main", f"--experiment={experiment}",
             f"--workdir={workdir}", *(f"--set={kv}" for kv in sets), *extra]
  exports = [f"export {remote.check_env_key(k)}={shlex.quote(v)}" for k, v in env]
  lines += [
      "set -euo pipefail",
      "cd " + (shlex.quote(chdir) if chdir else '"$SLURM_SUBMIT_DIR"'),
      'COORDINATOR_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
      "export GCA_JAX_DISTRIBUTED=1",
      f'export GCA_COORDINATOR_ADDRESS="$COORDINATOR_HOST:{port}"',
      f"export GCA_NUM_PROCESSES={nodes}",
      *exports,
      'echo "gca-jax: $SLURM_JOB_NUM_NODES nodes, coordinator $GCA_COORDINATOR_ADDRESS"',
      # Each task learns its rank from SLURM_PROCID, evaluated inside that task.
      f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
      "bash -c 'export GCA_PROCESS_ID=\"$SLURM_PROCID\"; exec \"$@\"' gca-task "
      f"{shlex.join(program)}",
  ]
  return "\n".join(lines) + "\n"


def _env() -> list[tuple[str, str]]:
  out = []
  for kv in _ENV.value:
    key, sep, value = kv.partition("=")
    if not sep:
      raise LaunchError(f"--env={kv!r} should look like KEY=VALUE")
    out.append((key, value))
  return out


def main(argv: list[str]) -> int:
  try:
    missing = [f"--{f.name}" for f in (_NODES, _GPUS, _EXPERIMENT, _WORKDIR) if f.value is None]
    if missing:
      raise LaunchError(f"missing required flag(s): {', '.join(missing)}")
    bad_sets = [kv for kv in _SET.value if "=" not in kv]
    if bad_sets:
      raise LaunchError(f"--set values should look like key=value: {bad_sets}")
    try:
      text = render(nodes=_NODES.value, gpus_per_node=_GPUS.value, experiment=_EXPERIMENT.value,
                    workdir=_WORKDIR.value, sets=_SET.value, env=_env(), extra=argv[1:],
                    job_name=_JOB.value, partition=_PARTITION.value, account=_ACCOUNT.value,
                    time=_TIME.value, cpus_per_task=_CPUS.value, port=_PORT.value,
                    python=_PYTHON.value, chdir=_CHDIR.value)
    except ValueError as e:
      raise LaunchError(str(e)) from None
    if _OUTPUT.value == "-":
      if _SUBMIT.value:
        raise LaunchError("--submit needs --output=PATH")
      sys.stdout.write(text)
      return 0
    with open(_OUTPUT.value, "w") as f:
      f.write(text)
    print(f"wrote {_OUTPUT.value}", file=sys.stderr)
    if _SUBMIT.value:
      return subprocess.run(["sbatch", _OUTPUT.value]).returncode
    return 0
  except LaunchError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  app.run(main)
