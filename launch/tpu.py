"""TPU-VM launcher: `python -m launch.tpu COMMAND [flags] [-- extra program args]`.

Commands:
  create   request a queued resource (spot / best-effort / on-demand) and wait until ACTIVE
  setup    ship `git archive HEAD` to every worker and pip-install it into a venv
  run      start `python -m experiments.main` detached on all workers (--wait: watch it, and
           recreate + set up + rerun after a preemption, at most --max_retries times)
  logs     tail one worker's log of a run
  stop     SIGTERM the run on all workers
  delete   delete the queued resource and its TPU
  status   the queued resource's state, and the latest run's state per worker
  sweep    run several specs (--grid or --sweep) one after another on the same TPU

Defaults come from launch/defaults.toml (--defaults=PATH); flags override them. --dry_run prints
the exact commands, shell-quoted, and runs nothing.
"""
from __future__ import annotations

import pathlib
import sys

from absl import app, flags

from gca_jax.flagdefs import define

from launch import manifest, remote, settings, sweep
from launch.cluster import Cluster, Preempted, Timing
from launch.errors import LaunchError
from launch.shell import Runner

COMMANDS = ("create", "setup", "run", "logs", "stop", "delete", "status", "sweep")

_DEFAULTS = flags.DEFINE_string("defaults", str(settings.DEFAULTS_PATH), "TOML file of defaults.")
for _key, _help in [("project", "GCP project."), ("zone", "TPU zone."),
                    ("tpu_type", "Accelerator type, e.g. v4-32."),
                    ("runtime_version", "TPU runtime (software) version."),
                    ("name", "Queued resource / TPU name (default <name_prefix>-<tpu_type>)."),
                    ("name_prefix", "Prefix of the default TPU name."),
                    ("bucket", "Base of the default workdir, e.g. gs://b/gca_jax."),
                    ("provisioning", "spot | best_effort | on_demand."),
                    ("remote_dir", "Source directory on each worker (relative to $HOME).")]:
  flags.DEFINE_string(_key, None, _help + " Default: from --defaults.")
flags.DEFINE_integer("max_retries", None, "Preemption retries per run. Default: from --defaults.")
_DRY_RUN = define("bool", "dry_run", False, "Print the commands instead of running them.")
_GCLOUD = flags.DEFINE_string("gcloud", "gcloud", "The gcloud executable.")
_REPO = flags.DEFINE_string("repo_dir", None, "Git repository to ship (default: the one around cwd).")
_RUNS = flags.DEFINE_string("runs_dir", str(manifest.DEFAULT_RUNS_DIR), "Where run manifests go.")
_EXPERIMENT = define("string", "experiment", None, "Registered experiment name.")
_WORKDIR = define("string", "workdir", None, "Run directory, local or gs:// (default <bucket>/<experiment>).")
_SET = define("multi_string", "set", [], "Config override key=value, passed to the program.")
_ENV = define("multi_string", "env", [], "KEY=VALUE exported on every worker.")
_GRID = flags.DEFINE_multi_string("grid", [], "sweep: key=v1,v2,... ; specs are the cartesian product.")
_SWEEP = define("string", "sweep", None, "sweep: name resolved by experiments.registry.expand_sweep.")
_RUN_ID = flags.DEFINE_string("run_id", None, "run: reuse this id; logs/stop/status: default latest run.")
_WAIT = flags.DEFINE_bool("wait", False, "run: wait for the end, recreating the TPU after preemption.")
_KEEP_GOING = flags.DEFINE_bool("keep_going", False, "sweep: continue after a failed run.")
_WORKER = flags.DEFINE_integer("worker", 0, "logs: which worker.")
_LINES = flags.DEFINE_integer("lines", 100, "logs: how many lines.")
_FOLLOW = flags.DEFINE_bool("follow", False, "logs: keep following.")
_POLL = flags.DEFINE_float("poll_s", 30.0, "Seconds between state / run checks.")
_CREATE_TIMEOUT = flags.DEFINE_float("create_timeout_s", 7200.0, "Give up waiting for ACTIVE after this.")

_SETTING_FLAGS = ("project", "zone", "tpu_type", "runtime_version", "name", "name_prefix", "bucket",
                  "provisioning", "remote_dir", "max_retries")


def _settings() -> settings.Settings:
  return settings.resolve(_DEFAULTS.value, {k: flags.FLAGS[k].value for k in _SETTING_FLAGS})


def _cluster(s: settings.Settings) -> Cluster:
  repo = pathlib.Path(_REPO.value) if _REPO.value else None
  return Cluster(s, Runner(_DRY_RUN.value), _GCLOUD.value,
                 Timing(poll_s=_POLL.value, create_timeout_s=_CREATE_TIMEOUT.value), repo)


def _env() -> tuple[tuple[str, str], ...]:
  pairs = []
  for kv in _ENV.value:
    key, sep, value = kv.partition("=")
    if not sep:
      raise LaunchError(f"--env={kv!r} should look like KEY=VALUE")
    try:
      pairs.append((remote.check_env_key(key), value))
    except ValueError as e:
      raise LaunchError(str(e)) from None
  return tuple(pairs)


def _workdir(s: settings.Settings, default_leaf: str) -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  if s.bucket:
    return f"{s.bucket.rstrip('/')}/{default_leaf}"
  raise LaunchError("--workdir is required (or set `bucket` in the defaults file)")


def _run_id_for(s: settings.Settings) -> str:
  if _RUN_ID.value:
    return manifest.check_run_id(_RUN_ID.value)
  rec = manifest.latest(pathlib.Path(_RUNS.value), s.tpu_name)
  if rec is None:
    raise LaunchError(f"no run manifest for {s.tpu_name} in {_RUNS.value}; pass --run_id")
  return rec["run_id"]


def _launch(c: Cluster, spec: sweep.Spec, workdir: str, extra: list[str], wait: bool,
            run_id: str | None = None, sweep_name: str | None = None) -> bool:
  """Starts (and maybe waits for) one run and keeps its manifest current; True on success."""
  run_id = manifest.check_run_id(run_id) if run_id else manifest.new_run_id()
  program = remote.Program(spec.experiment, workdir, tuple(map(sweep.check_set, spec.sets)),
                           tuple(extra), _env())
  repo = c.repo or manifest.repo_root()
  try:
    revision, dirty = manifest.git_revision(repo), manifest.git_dirty(repo)
  except LaunchError:
    revision, dirty = "unknown", None
  s = c.s
  record = {
      "run_id": run_id, "created_utc": manifest.utc_now(), "git_revision": revision, "git_dirty": dirty,
      "tpu": {"name": s.tpu_name, "zone": s.zone, "project": s.project, "type": s.tpu_type,
              "runtime_version": s.runtime_version, "provisioning": s.provisioning},
      "experiment": spec.experiment, "workdir": workdir, "set": list(spec.sets),
      "extra_args": list(extra), "env_keys": [k for k, _ in program.env], "sweep": sweep_name,
      "remote_log_dir": f"~/{remote.LOG_ROOT}/{run_id}", "status": "starting", "retries": 0,
  }
  runs = pathlib.Path(_RUNS.value)
  save = (lambda: None) if c.runner.dry_run else (lambda: manifest.write(runs, record))
  save()
  print(f"[launch] run {run_id}: {spec.experiment} -> {workdir}", file=sys.stderr)

  def on_retry(n: int) -> None:
    record.update(retries=n, status="recovering")
    save()

  try:
    result = c.run(run_id, program, wait=wait, on_retry=on_retry)
  except (LaunchError, Preempted):
    record["status"] = "launch_failed"
    save()
    raise
  if result is None:
    record["status"] = "started"
    save()
    return True
  record["exit_codes"] = {str(k): v for k, v in sorted(result.items())}
  ok = all(v == 0 for v in result.values())
  record["status"] = "succeeded" if ok else "failed"
  save()
  if not ok:
    print(f"[launch] run {run_id} failed: {record['exit_codes']}; see `python -m launch.tpu logs "
          f"--run_id={run_id} --worker=N`", file=sys.stderr)
  return ok


def _specs() -> tuple[list[sweep.Spec], str]:
  sets = [sweep.check_set(kv) for kv in _SET.value]
  if _SWEEP.value:
    if _GRID.value:
      raise LaunchError("pass either --sweep or --grid, not both")
    return sweep.from_registry(_SWEEP.value, sets), _SWEEP.value
  if not _GRID.value:
    raise LaunchError("sweep needs --grid=key=v1,v2 (with --experiment) or --sweep=NAME")
  if not _EXPERIMENT.value:
    raise LaunchError("--experiment is required with --grid")
  return sweep.grid(_EXPERIMENT.value, sets, _GRID.value), _EXPERIMENT.value


def _dispatch(command: str, extra: list[str]) -> int:
  s = _settings()
  c = _cluster(s)
  if extra and command not in ("run", "sweep"):
    raise LaunchError(f"{command} takes no positional arguments, got {extra}")
  if command == "create":
    c.create()
  elif command == "setup":
    rev = c.setup()
    print(f"[launch] {s.tpu_name}: installed {rev}", file=sys.stderr)
  elif command == "delete":
    c.delete()
  elif command == "run":
    if not _EXPERIMENT.value:
      raise LaunchError("--experiment is required for run")
    spec = sweep.Spec(_EXPERIMENT.value, tuple(_SET.value))
    ok = _launch(c, spec, _workdir(s, spec.experiment), extra, _WAIT.value, _RUN_ID.value)
    return 0 if ok else 1
  elif command == "sweep":
    specs, name = _specs()
    base = _workdir(s, name)
    failed = []
    for i, spec in enumerate(specs):
      print(f"[launch] sweep {name}: run {i + 1}/{len(specs)}: {spec}", file=sys.stderr)
      if not _launch(c, spec, sweep.join_workdir(base, spec), extra, wait=True, sweep_name=name):
        failed.append(spec)
        if not _KEEP_GOING.value:
          break
    if failed:
      print(f"[launch] sweep {name}: {len(failed)} failed run(s): {failed}", file=sys.stderr)
      return 1
  elif command == "logs":
    return c.tail(_run_id_for(s), _WORKER.value, _LINES.value, _FOLLOW.value)
  elif command == "stop":
    c.stop(_run_id_for(s))
  elif command == "status":
    state = c.state()
    print(f"{s.tpu_name}: {state}")
    rec_id = _RUN_ID.value or (manifest.latest(pathlib.Path(_RUNS.value), s.tpu_name) or {}).get("run_id")
    if state == "ACTIVE" and rec_id:
      for worker, st in sorted(c.run_status(manifest.check_run_id(rec_id)).items()):
        print(f"run {rec_id} worker {worker}: {st if isinstance(st, str) else f'exit {st}'}")
  return 0


def main(argv: list[str]) -> int:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    got = f"unknown command {argv[1]!r}" if len(argv) >= 2 else "no command given"
    print(f"error: {got}; use one of: {', '.join(COMMANDS)} "
          "(python -m launch.tpu COMMAND --help)", file=sys.stderr)
    return 2
  try:
    return _dispatch(argv[1], argv[2:])
  except (LaunchError, Preempted) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  app.run(main)
