"""Shell text run on TPU workers through `gcloud ... ssh --command`.

Every value that comes from a user goes through `shlex.quote`; paths relative to $HOME become
`"$HOME"/'rel'` so the remote shell expands only $HOME. Each worker finds its index from
GCA_WORKER_ID or the metadata server, and keeps its run files in the run's log directory:
worker<N>.log (stdout+stderr), worker<N>.pid (process-group leader), worker<N>.exit (status).
"""
from __future__ import annotations

import dataclasses
import re
import shlex

LOG_ROOT = "gca_jax_logs"
TARBALL = "gca_jax_src.tar.gz"
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Alive and not a zombie (an orphan may wait for a reaper, and `kill -0` succeeds on zombies).
_ALIVE = '[ -f "$P" ] && ps -o stat= -p "$(cat "$P")" 2>/dev/null | grep -qv "^Z"'
_WORKER = (
    'W="${GCA_WORKER_ID:-$(curl -sf -m 5 -H "Metadata-Flavor: Google" '
    'http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number'
    ' 2>/dev/null || hostname)}"')


def path(p: str) -> str:
  """A quoted remote path: absolute stays absolute, anything else hangs under $HOME."""
  if p.startswith("/"):
    return shlex.quote(p)
  p = p[2:] if p.startswith("~/") else p
  return '"$HOME"/' + shlex.quote(p)


def venv_dir(remote_dir: str) -> str:
  return remote_dir.rstrip("/") + "_venv"


def log_dir(run_id: str) -> str:
  return path(f"{LOG_ROOT}/{run_id}")


def check_env_key(key: str) -> str:
  if not _ENV_KEY.match(key):
    raise ValueError(f"environment variable name {key!r} is not valid (letters, digits, _)")
  return key


@dataclasses.dataclass(frozen=True)
class Program:
  """What every worker runs: `python -m experiments.main` with flags, plus environment."""
  experiment: str
  workdir: str
  sets: tuple[str, ...] = ()
  extra_args: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()

  def argv(self) -> list[str]:
    return ["-m", "experiments.main", f"--experiment={self.experiment}",
            f"--workdir={self.workdir}", *(f"--set={kv}" for kv in self.sets), *self.extra_args]


def setup_script(remote_dir: str, revision: str) -> str:
  """Unpacks the shipped tarball into a fresh source dir, then (re)installs into a venv beside it."""
  src, venv = path(remote_dir), path(venv_dir(remote_dir))
  return "; ".join([
      "set -e", f"S={src}", f'N="$S".new', f"V={venv}", f"T={path(TARBALL)}",
      'rm -rf "$N"', 'mkdir -p "$N"', 'tar -xzf "$T" -C "$N"', 'rm -rf "$S"', 'mv "$N" "$S"',
      f'printf "%s\\n" {shlex.quote(revision)} > "$S"/.git_revision',
      'python3 -m venv "$V"', '"$V"/bin/pip install -q --upgrade pip', 'cd "$S"',
      '"$V"/bin/pip install -q -e .',
      'if [ -f requirements-tpu.txt ]; then "$V"/bin/pip install -q -r requirements-tpu.txt; fi',
      f'echo "gca-jax {shlex.quote(revision)} installed on $(hostname)"',
  ])


def start_script(remote_dir: str, run_id: str, program: Program) -> str:
  """Starts the program detached (setsid + nohup) on this worker; a live run is left alone."""
  env = [("GCA_JAX_DISTRIBUTED", "1"), ("GCA_RUN_ID", run_id), *program.env]
  exports = " ".join(f"{check_env_key(k)}={shlex.quote(v)}" for k, v in env)
  python = path(venv_dir(remote_dir) + "/bin/python")
  inner = (f"cd {path(remote_dir)} && export {exports} && "
           f"{python} {shlex.join(program.argv())}; echo $? > \"$1\"")
  return "; ".join([
      _WORKER, f"D={log_dir(run_id)}", 'P="$D/worker$W.pid"', 'mkdir -p "$D"',
      f'if {_ALIVE}; then echo "GCA_ALREADY_RUNNING worker=$W"; exit 0; fi',
      'rm -f "$D/worker$W.exit"',
      f'setsid nohup bash -c {shlex.quote(inner)} gca-run "$D/worker$W.exit" '
      '> "$D/worker$W.log" 2>&1 < /dev/null & echo $! > "$P"',
      'echo "GCA_STARTED worker=$W pid=$(cat "$P")"',
  ])


def status_script(run_id: str) -> str:
  """Prints one `GCA_STATUS worker=N running|exit=CODE|gone` line per worker."""
  return "; ".join([
      _WORKER, f"D={log_dir(run_id)}", 'P="$D/worker$W.pid"',
      # Liveness first: the exit file is written before the process ends, so no race.
      f'if {_ALIVE}; then echo "GCA_STATUS worker=$W running"; '
      'elif [ -f "$D/worker$W.exit" ]; then echo "GCA_STATUS worker=$W exit=$(cat "$D/worker$W.exit")"; '
      'else echo "GCA_STATUS worker=$W gone"; fi',
  ])


def stop_script(run_id: str) -> str:
  """Sends SIGTERM to the run's process group on this worker."""
  return "; ".join([
      _WORKER, f"D={log_dir(run_id)}", 'P="$D/worker$W.pid"',
      f'if {_ALIVE}; then kill -TERM -- "-$(cat "$P")" 2>/dev/null || kill -TERM "$(cat "$P")"; '
      'echo "GCA_STOPPED worker=$W"; else echo "GCA_NOT_RUNNING worker=$W"; fi',
  ])


def tail_script(run_id: str, worker: int, lines: int, follow: bool) -> str:
  log = f'{log_dir(run_id)}/worker{int(worker)}.log'
  return f"tail -n {int(lines)}{' -F' if follow else ''} {log}"


_STATUS = re.compile(r"GCA_STATUS worker=(\S+) (running|gone|exit=(-?\d+))")


def parse_status(output: str) -> dict[str, str | int]:
  """worker -> 'running' | 'gone' | exit code, from the status script's output."""
  found: dict[str, str | int] = {}
  for m in _STATUS.finditer(output):
    found[m.group(1)] = int(m.group(3)) if m.group(3) is not None else m.group(2)
  return found
