"""launch.tpu subcommands against a fake gcloud: the argv each one sends, dry run, bad input."""
from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

import launch
from launch import settings
from launch.errors import LaunchError
from launch.fake_gcloud import FakeGcloud, make_repo

NAME = "gca-jax-v4-8"
WHERE = ["--zone=us-central2-b"]
QR = ["compute", "tpus", "queued-resources"]
OK_TOML = 'zone = "z"\ntpu_type = "v4-8"\nruntime_version = "r"\n'
SSH = ["compute", "tpus", "tpu-vm", "ssh", NAME, *WHERE]


@pytest.fixture
def env(tmp_path):
  fake = FakeGcloud(tmp_path / "fake")
  repo = make_repo(tmp_path / "repo")
  common = [f"--runs_dir={tmp_path / 'runs'}", "--poll_s=0.02"]

  def cli(*args, **kw):
    return fake.cli(*common, *args, cwd=repo, **kw)
  return fake, repo, cli, tmp_path


def _ok(proc):
  assert proc.returncode == 0, proc.stderr
  return proc


def test_create_spot_then_setup_then_run_then_delete(env):
  fake, repo, cli, tmp = env
  _ok(cli("create"))
  assert fake.calls() == [
      [*QR, "create", NAME, f"--node-id={NAME}", "--accelerator-type=v4-8",
       "--runtime-version=tpu-ubuntu2204-base", *WHERE, "--spot"],
      [*QR, "describe", NAME, *WHERE, "--format=value(state.state)"],
  ]
  _ok(cli("setup"))
  scp, setup = fake.calls()[2:]
  assert scp[:5] == ["compute", "tpus", "tpu-vm", "scp", scp[4]] and scp[4].endswith(".tar.gz")
  assert scp[5:] == [f"{NAME}:gca_jax_src.tar.gz", *WHERE, "--worker=all"]
  assert setup[:-1] == [*SSH, "--worker=all"] and setup[-1].startswith("--command=")
  home = fake.remote_home(NAME)
  assert (home / "gca_jax" / "pyproject.toml").exists()
  rev = (home / "gca_jax" / ".git_revision").read_text().strip()
  assert len(rev) == 40
  installs = [c["argv"] for c in fake.remote_calls() if c["prog"] == "pip"]
  assert ["install", "-q", "-e", "."] in installs

  proc = _ok(cli("run", "--experiment=tiny", "--workdir=gs://b/tiny", "--set=optim.lr=0.1",
                 "--wait", "--", "--mode=train"))
  runs = [c for c in fake.remote_calls() if c["argv"][:2] == ["-m", "experiments.main"]]
  assert sorted(c["env"]["GCA_WORKER_ID"] for c in runs) == ["0", "1"]
  for c in runs:
    assert c["argv"] == ["-m", "experiments.main", "--experiment=tiny", "--workdir=gs://b/tiny",
                         "--set=optim.lr=0.1", "--mode=train"]
    assert c["env"]["GCA_JAX_DISTRIBUTED"] == "1"
    assert c["cwd"] == str(home / "gca_jax")
  (manifest_path,) = (tmp / "runs").glob("*.json")
  record = json.loads(manifest_path.read_text())
  assert record["status"] == "succeeded" and record["git_revision"] == rev
  assert record["exit_codes"] == {"0": 0, "1": 0} and record["retries"] == 0
  run_id = record["run_id"]
  assert c["env"]["GCA_RUN_ID"] == run_id
  for w in (0, 1):
    log = home / "gca_jax_logs" / run_id / f"worker{w}.log"
    assert "fake program running" in log.read_text()
  assert run_id in proc.stderr

  n = len(fake.calls())
  proc = _ok(cli("logs", "--worker=1", "--lines=5"))
  assert "fake program running" in proc.stdout
  assert fake.calls()[n] == [*SSH, "--worker=1",
                             f'--command=tail -n 5 "$HOME"/gca_jax_logs/{run_id}/worker1.log']
  proc = _ok(cli("status"))
  assert f"{NAME}: ACTIVE" in proc.stdout and f"run {run_id} worker 1: exit 0" in proc.stdout
  n = len(fake.calls())
  _ok(cli("delete"))
  assert fake.calls()[n:] == [[*QR, "delete", NAME, *WHERE, "--force", "--quiet"]]
  assert fake.load()["resources"] == {}


@pytest.mark.parametrize("provisioning,prefix,flag", [
    ("best_effort", ["alpha"], ["--best-effort"]), ("on_demand", [], [])])
def test_create_provisioning_and_flag_overrides(env, provisioning, prefix, flag):
  fake, _, cli, _ = env
  _ok(cli("create", f"--provisioning={provisioning}", "--project=my-proj", "--zone=eu-a",
          "--tpu_type=v5litepod-16", "--runtime_version=v2-alpha-tpuv5-lite", "--name=my-tpu"))
  assert fake.calls()[0] == [
      *prefix, *QR, "create", "my-tpu", "--node-id=my-tpu", "--accelerator-type=v5litepod-16",
      "--runtime-version=v2-alpha-tpuv5-lite", "--zone=eu-a", "--project=my-proj", *flag]


def test_create_waits_until_active_and_fails_on_failed(env):
  fake, _, cli, _ = env
  fake.update(create_state="PROVISIONING", describe_queue=["PROVISIONING", "ACTIVE"])
  proc = _ok(cli("create"))
  assert [c[3] for c in fake.calls()] == ["create", "describe", "describe"]
  assert "PROVISIONING" in proc.stderr
  fake.save({"resources": {}, "describe_queue": ["FAILED"], "ssh_failures": []})
  proc = cli("create")
  assert proc.returncode == 1 and "FAILED" in proc.stderr
  fake.save({"resources": {}, "describe_queue": [], "ssh_failures": [],
             "create_state": "WAITING_FOR_RESOURCES"})
  proc = cli("create", "--create_timeout_s=0.1")
  assert proc.returncode == 1 and "not ACTIVE after" in proc.stderr


def test_dry_run_prints_exact_commands_and_runs_nothing(env):
  fake, _, cli, tmp = env
  proc = _ok(cli("create", "--dry_run"))
  assert proc.stdout.splitlines() == [
      shlex.join(["gcloud", *QR, "create", NAME, f"--node-id={NAME}", "--accelerator-type=v4-8",
                  "--runtime-version=tpu-ubuntu2204-base", *WHERE, "--spot"]),
      shlex.join(["gcloud", *QR, "describe", NAME, *WHERE, "--format=value(state.state)"]),
  ]
  proc = _ok(cli("run", "--dry_run", "--experiment=a b", "--workdir=/w", "--set=x=it's"))
  lines = proc.stdout.splitlines()
  assert len(lines) == 2
  start = shlex.split(lines[1])
  assert start[:-1] == ["gcloud", *SSH, "--worker=all"] and "experiments.main" in start[-1]
  _ok(cli("setup", "--dry_run"))
  _ok(cli("delete", "--dry_run"))
  _ok(cli("sweep", "--dry_run", "--experiment=e", "--workdir=/w", "--grid=k=1,2"))
  assert fake.calls() == []
  assert not (tmp / "runs").exists()


def _alive(pid: int) -> bool:
  """True unless the process is gone or a zombie (nothing may reap orphans in a container)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False


def test_stop_kills_the_run_on_every_worker(env):
  fake, _, cli, tmp = env
  _ok(cli("create"))
  _ok(cli("setup"))
  _ok(cli("run", "--experiment=e", "--workdir=/w", env={"FAKE_PROGRAM_SLEEP": "60"}))
  run_id = json.loads(next((tmp / "runs").glob("*.json")).read_text())["run_id"]
  logs = fake.remote_home(NAME) / "gca_jax_logs" / run_id
  pids = [int((logs / f"worker{w}.pid").read_text()) for w in (0, 1)]
  try:
    assert "worker 0: running" in _ok(cli("status")).stdout
    proc = _ok(cli("stop"))
    assert proc.stdout.count("GCA_STOPPED") == 2
    for pid in pids:
      for _ in range(250):
        if not _alive(pid):
          break
        time.sleep(0.02)
      else:
        pytest.fail(f"worker process {pid} survived stop")
    assert "worker 1: gone" in _ok(cli("status")).stdout
  finally:
    for pid in pids:
      try:
        os.killpg(pid, signal.SIGKILL)
      except (ProcessLookupError, PermissionError):
        pass


def test_bad_input_gives_clear_errors(env):
  fake, repo, _, tmp = env
  cases = [
      (["frobnicate"], "unknown command 'frobnicate'"),
      ([], "no command given"),
      (["run", "--workdir=/w"], "--experiment is required"),
      (["run", "--experiment=e"], "--workdir is required"),
      (["run", "--experiment=e", "--workdir=/w", "--set=novalue"], "key=value"),
      (["run", "--experiment=e", "--workdir=/w", "--env=1BAD=x"], "not valid"),
      (["logs"], "no run manifest"),
      (["stop", "--run_id=x; touch PWNED"], "not valid"),
      (["create", "--provisioning=cheap"], "provisioning='cheap'"),
      (["sweep", "--experiment=e", "--workdir=/w"], "--grid"),
      (["create", "--no_such_flag"], "no_such_flag"),
  ]
  bad_toml = tmp / "bad.toml"
  bad_toml.write_text("zone = \n")
  cases.append((["create", f"--defaults={bad_toml}"], "not valid TOML"))
  # Independent processes: start them all, then collect (the test set has a time budget).
  env_ = fake.env()
  env_["PYTHONPATH"] = str(pathlib.Path(launch.__file__).resolve().parent.parent)
  procs = [subprocess.Popen([sys.executable, "-m", "launch.tpu", f"--runs_dir={tmp / 'runs'}", *args],
                            cwd=repo, env=env_, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for args, _ in cases]
  for (args, message), proc in zip(cases, procs):
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, args
    assert message in err, (args, err)
  assert fake.calls() == []


def test_ssh_failure_that_is_not_preemption_is_an_error(env):
  fake, _, cli, _ = env
  _ok(cli("create"))
  fake.update(ssh_failures=[{"match": "", "msg": "Permission denied (publickey).", "rc": 1}])
  proc = cli("run", "--experiment=e", "--workdir=/w")
  assert proc.returncode == 1 and "Permission denied" in proc.stderr
  assert [c[3] for c in fake.calls()].count("create") == 1


@pytest.mark.parametrize("text,message", [
    ('zome = "x"\n', "unknown key 'zome'"), ('max_retries = "3"\n', "should be a int"),
    (None, "does not exist"), ("", "zone is empty"),
    (f'{OK_TOML}provisioning = "cheap"\n', "provisioning='cheap'"),
    (f'{OK_TOML}name_prefix = "9bad"\n', "not valid")])
def test_bad_defaults_file(tmp_path, text, message):
  path = tmp_path / "d.toml"
  if text is not None:
    path.write_text(text)
  with pytest.raises(LaunchError, match=re.escape(message)):
    settings.resolve(path, {})
