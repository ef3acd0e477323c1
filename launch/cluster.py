"""One TPU queued resource and what we do on it: create, set up, start, watch, recover, delete."""
from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import sys
import tempfile
import time

from launch import gcloud, manifest, remote
from launch.errors import LaunchError
from launch.settings import Settings
from launch.shell import Result, Runner

# What a failed `gcloud ... ssh` prints when the TPU went away under it.
_PREEMPTED = re.compile(
    r"preempt|NOT_FOUND|not found|UNAVAILABLE|connection (refused|reset|closed|timed out)|"
    r"broken pipe|return code \[255\]|exit status 255", re.IGNORECASE)


def looks_preempted(output: str) -> bool:
  return bool(_PREEMPTED.search(output))


class Preempted(Exception):
  """The TPU is gone or unusable; the caller recreates it (bounded by max_retries)."""


@dataclasses.dataclass
class Timing:
  poll_s: float = 30.0
  create_timeout_s: float = 7200.0
  max_ssh_errors: int = 3


class Cluster:
  """Commands against one queued resource named `settings.tpu_name` (its node has the same name)."""

  def __init__(self, settings: Settings, runner: Runner, gcloud_bin: str = "gcloud",
               timing: Timing | None = None, repo: pathlib.Path | None = None):
    self.s, self.runner, self.bin = settings, runner, gcloud_bin
    self.timing = timing or Timing()
    self.repo = repo

  # -- resource lifecycle ------------------------------------------------------------------------
  def state(self) -> str:
    res = self.runner.run(gcloud.describe_state(self.bin, self.s), echo=False, dry_stdout=gcloud.READY)
    if res.returncode:
      if "NOT_FOUND" in res.output or "not found" in res.output.lower():
        return "NOT_FOUND"
      raise LaunchError(f"describing {self.s.tpu_name} failed:\n{res.output.strip()}")
    return res.stdout.strip().splitlines()[-1].strip() if res.stdout.strip() else "UNKNOWN"

  def create(self) -> None:
    """Requests the queued resource, then polls until ACTIVE (bounded by create_timeout_s)."""
    res = self.runner.run(gcloud.create(self.bin, self.s))
    _echo(res)
    if res.returncode:
      raise LaunchError(f"creating {self.s.tpu_name} failed (exit {res.returncode}):\n"
                        f"{res.output.strip()}")
    self.wait_active()

  def wait_active(self) -> None:
    deadline = time.monotonic() + self.timing.create_timeout_s
    while True:
      state = self.state()
      if state == gcloud.READY:
        _info(f"{self.s.tpu_name} is ACTIVE")
        return
      if state in gcloud.LOST:
        raise Preempted(f"{self.s.tpu_name} went to {state} while waiting for ACTIVE")
      if time.monotonic() > deadline:
        raise LaunchError(f"{self.s.tpu_name} not ACTIVE after {self.timing.create_timeout_s:g}s "
                          f"(last state {state}); it stays queued: `delete` it or wait longer")
      _info(f"{self.s.tpu_name} is {state}; waiting")
      time.sleep(self.timing.poll_s)

  def delete(self, missing_ok: bool = False) -> None:
    res = self.runner.run(gcloud.delete(self.bin, self.s))
    _echo(res)
    if res.returncode and not (missing_ok and "NOT_FOUND" in res.output):
      raise LaunchError(f"deleting {self.s.tpu_name} failed:\n{res.output.strip()}")

  # -- code on the workers -----------------------------------------------------------------------
  def setup(self) -> str:
    """Ships `git archive HEAD` to every worker and installs it in a venv; returns the revision."""
    repo = self.repo or manifest.repo_root()
    try:
      rev = manifest.git_revision(repo)
    except LaunchError:
      if not self.runner.dry_run:
        raise
      rev = "HEAD"
    if not self.runner.dry_run and manifest.git_dirty(repo):
      _info(f"warning: {repo} has uncommitted changes; only commit {rev[:12]} is shipped")
    tmp_dir = tempfile.gettempdir() if self.runner.dry_run else tempfile.mkdtemp(prefix="gca_jax-")
    tarball = str(pathlib.Path(tmp_dir) / f"gca_jax-{rev[:12]}.tar.gz")
    try:
      self._must(self.runner.run(
          ["git", "-C", str(repo), "archive", "--format=tar.gz", f"--output={tarball}", rev]),
          "git archive")
      self._ssh_ok(self.runner.run(gcloud.scp(self.bin, self.s, tarball, remote.TARBALL)), "copying")
    finally:
      if not self.runner.dry_run:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    self._ssh_ok(self.runner.run(
        gcloud.ssh(self.bin, self.s, remote.setup_script(self.s.remote_dir, rev))), "setup")
    return rev

  def start(self, run_id: str, program: remote.Program) -> None:
    script = remote.start_script(self.s.remote_dir, run_id, program)
    self._ssh_ok(self.runner.run(gcloud.ssh(self.bin, self.s, script)), "starting the run")

  def run_status(self, run_id: str) -> dict[str, str | int]:
    res = self.runner.run(gcloud.ssh(self.bin, self.s, remote.status_script(run_id)), echo=False)
    self._ssh_ok(res, "checking the run", echo=False)
    return remote.parse_status(res.stdout)

  def stop(self, run_id: str) -> None:
    self._ssh_ok(self.runner.run(gcloud.ssh(self.bin, self.s, remote.stop_script(run_id))), "stop")

  def tail(self, run_id: str, worker: int, lines: int, follow: bool) -> int:
    script = remote.tail_script(run_id, worker, lines, follow)
    return self.runner.run(gcloud.ssh(self.bin, self.s, script, worker=str(worker)),
                           capture=False).returncode

  # -- a run that survives preemption ------------------------------------------------------------
  def wait_run(self, run_id: str) -> dict[str, str | int]:
    """Polls until no worker is running; raises Preempted if the TPU goes away meanwhile."""
    errors = 0
    while True:
      time.sleep(self.timing.poll_s)
      try:
        status = self.run_status(run_id)
        if not status:
          raise LaunchError(f"no worker of {self.s.tpu_name} reported on run {run_id}")
        errors = 0
      except LaunchError:
        errors += 1
        if self.state() in gcloud.LOST:
          raise Preempted(f"{self.s.tpu_name} is gone") from None
        if errors >= self.timing.max_ssh_errors:
          raise
        continue
      if "running" not in status.values():
        state = self.state()
        if state in gcloud.LOST:
          raise Preempted(f"{self.s.tpu_name} is {state}")
        return status

  def run(self, run_id: str, program: remote.Program, wait: bool,
          on_retry=lambda retries: None) -> dict[str, str | int] | None:
    """Ensures the TPU, starts the run, and (if `wait`) watches it; a lost TPU is deleted,
    recreated, set up again and the same command rerun, at most max_retries times."""
    retries, lost = 0, False
    while True:
      try:
        if lost:
          self.recreate()
        state = self.state()
        if state in gcloud.LOST:
          raise Preempted(f"{self.s.tpu_name} is {state}")
        if state != gcloud.READY:
          self.wait_active()
        self.start(run_id, program)
        if not wait or self.runner.dry_run:
          return None
        return self.wait_run(run_id)
      except Preempted as e:
        if retries >= self.s.max_retries:
          raise LaunchError(f"{e}; giving up after {retries} retries (--max_retries="
                            f"{self.s.max_retries})") from None
        retries, lost = retries + 1, True
        on_retry(retries)
        _info(f"{e}: recreating it, retry {retries}/{self.s.max_retries}")

  def recreate(self) -> None:
    self.delete(missing_ok=True)
    self.create()
    self.setup()

  def _must(self, res: Result, what: str) -> None:
    if res.returncode:
      raise LaunchError(f"{what} failed (exit {res.returncode}):\n{res.output.strip()}")

  def _ssh_ok(self, res: Result, what: str, echo: bool = True) -> None:
    if echo:
      _echo(res)
    if res.returncode:
      if looks_preempted(res.output):
        raise Preempted(f"{what} on {self.s.tpu_name} failed: {res.output.strip()[-300:]}")
      raise LaunchError(f"{what} on {self.s.tpu_name} failed (exit {res.returncode}):\n"
                        f"{res.output.strip()}")


def _echo(res: Result) -> None:
  if res.stdout:
    sys.stdout.write(res.stdout)
  if res.stderr:
    sys.stderr.write(res.stderr)
  sys.stdout.flush()


def _info(msg: str) -> None:
  print(f"[launch] {msg}", file=sys.stderr, flush=True)
