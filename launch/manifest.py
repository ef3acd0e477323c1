"""Run ids, the git revision being shipped, and the small JSON manifest each run leaves locally."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import secrets
import subprocess
from typing import Any

from launch.errors import LaunchError

DEFAULT_RUNS_DIR = pathlib.Path(__file__).with_name("runs")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def new_run_id(now: datetime.datetime | None = None) -> str:
  """UTC timestamp plus 6 random hex digits: sorts by time, unique across machines."""
  now = now or datetime.datetime.now(datetime.timezone.utc)
  return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_run_id(run_id: str) -> str:
  if not _RUN_ID.match(run_id):
    raise LaunchError(f"run id {run_id!r} is not valid: use letters, digits, '.', '_' and '-'")
  return run_id


def _git(repo: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def repo_root(start: str | os.PathLike | None = None) -> pathlib.Path:
  """The git work tree containing `start` (default: the current directory)."""
  proc = _git(pathlib.Path(start or os.getcwd()), "rev-parse", "--show-toplevel")
  if proc.returncode:
    raise LaunchError(f"{start or os.getcwd()} is not inside a git repository (pass --repo_dir)")
  return pathlib.Path(proc.stdout.strip())


def git_revision(repo: pathlib.Path) -> str:
  proc = _git(repo, "rev-parse", "HEAD")
  if proc.returncode:
    raise LaunchError(f"{repo} has no commit yet; commit first (setup ships `git archive HEAD`)")
  return proc.stdout.strip()


def git_dirty(repo: pathlib.Path) -> bool:
  proc = _git(repo, "status", "--porcelain", "--untracked-files=no")
  return bool(proc.stdout.strip())


def write(runs_dir: pathlib.Path, record: dict[str, Any]) -> pathlib.Path:
  """Writes <runs_dir>/<run_id>.json atomically (temp file + rename)."""
  runs_dir.mkdir(parents=True, exist_ok=True)
  record = dict(record, updated_utc=utc_now())
  path = runs_dir / f"{record['run_id']}.json"
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
  tmp.replace(path)
  return path


def latest(runs_dir: pathlib.Path, tpu_name: str) -> dict[str, Any] | None:
  """The newest manifest for this TPU, or None."""
  best = None
  for p in sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else ():
    try:
      rec = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
      continue
    if rec.get("tpu", {}).get("name") == tpu_name:
      best = rec if best is None or rec.get("created_utc", "") >= best.get("created_utc", "") else best
  return best
