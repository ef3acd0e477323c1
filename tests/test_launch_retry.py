"""Preemption: describe / ssh say the TPU is gone -> delete, recreate, set up, rerun; bounded."""
from __future__ import annotations

import json

import pytest

from launch.fake_gcloud import FakeGcloud, make_repo

NAME = "gca-jax-v4-8"
RUN = ["run", "--experiment=e", "--workdir=gs://b/e", "--wait", "--max_retries=2"]


@pytest.fixture
def env(tmp_path):
  fake = FakeGcloud(tmp_path / "fake")
  repo = make_repo(tmp_path / "repo")
  runs = tmp_path / "runs"

  def cli(*args, **kw):
    return fake.cli(f"--runs_dir={runs}", "--poll_s=0.02", *args, cwd=repo, **kw)
  fake.update(resources={NAME: "ACTIVE"})
  return fake, cli, runs


def _verbs(fake):
  """One word per gcloud call: create/describe/delete, scp, or which script an ssh ran."""
  out = []
  for argv in fake.calls():
    verb = argv[3]
    if verb == "ssh":
      command = argv[-1]
      verb = ("setup" if "pip" in command else "start" if "GCA_STARTED" in command
              else "poll" if "GCA_STATUS" in command else "ssh")
    out.append(verb)
  return out


def _program_runs(fake):
  return [c for c in fake.remote_calls() if c["argv"][:2] == ["-m", "experiments.main"]]


def _manifest(runs):
  (path,) = runs.glob("*.json")
  return json.loads(path.read_text())


def _squeeze(verbs):
  """Collapses repeated polls, whose number depends on timing."""
  return [v for i, v in enumerate(verbs) if not (v == "poll" and i and verbs[i - 1] == "poll")]


def test_preempted_state_triggers_recreate_setup_rerun(env):
  fake, cli, runs = env
  fake.update(describe_queue=["SUSPENDED"])
  proc = cli(*RUN)
  assert proc.returncode == 0, proc.stderr
  assert _squeeze(_verbs(fake)) == [
      "describe", "delete", "create", "describe", "scp", "setup", "describe", "start", "poll",
      "describe"]
  assert len(_program_runs(fake)) == 2  # once per worker, on the new TPU
  record = _manifest(runs)
  assert record["status"] == "succeeded" and record["retries"] == 1
  assert "retry 1/2" in proc.stderr


def test_preemption_looking_ssh_error_triggers_rerun(env):
  fake, cli, runs = env
  fake.update(ssh_failures=[{"match": "GCA_STARTED", "rc": 255,
                             "msg": "ssh: connect to host 10.0.0.3 port 22: Connection refused"}])
  proc = cli(*RUN)
  assert proc.returncode == 0, proc.stderr
  assert _squeeze(_verbs(fake)) == [
      "describe", "start", "delete", "create", "describe", "scp", "setup", "describe", "start",
      "poll", "describe"]
  assert _manifest(runs)["retries"] == 1


def test_preemption_while_running_reruns_same_command(env):
  fake, cli, runs = env
  cli("setup")
  fake.update(ssh_failures=[{"match": "GCA_STATUS", "state": "SUSPENDED", "rc": 255,
                             "msg": "ERROR: TPU node was preempted"}])
  proc = cli(*RUN, "--set=a=1")
  assert proc.returncode == 0, proc.stderr
  verbs = _squeeze(_verbs(fake))
  assert verbs[2:] == ["describe", "start", "poll", "delete", "create", "describe",
                       "scp", "setup", "describe", "start", "poll", "describe"]
  argvs = [c["argv"] for c in _program_runs(fake)]
  assert argvs and all(a == argvs[0] for a in argvs) and "--set=a=1" in argvs[0]
  record = _manifest(runs)
  assert record["status"] == "succeeded" and record["retries"] == 1


def test_gives_up_after_max_retries_with_clear_error(env):
  fake, cli, runs = env
  fake.update(resources={NAME: "SUSPENDED"}, create_state="SUSPENDED")
  proc = cli(*RUN)
  assert proc.returncode == 1
  assert "giving up after 2 retries (--max_retries=2)" in proc.stderr
  verbs = _verbs(fake)
  assert verbs.count("create") == 2 and verbs.count("delete") == 2 and "start" not in verbs
  assert _manifest(runs)["status"] == "launch_failed"


def test_program_failure_is_not_retried(env):
  fake, cli, runs = env
  cli("setup")
  proc = cli(*RUN, env={"FAKE_PROGRAM_EXIT": "3"})
  assert proc.returncode == 1
  assert "logs --run_id=" in proc.stderr
  assert "create" not in _verbs(fake)
  record = _manifest(runs)
  assert record["status"] == "failed" and record["exit_codes"] == {"0": 3, "1": 3}
