"""Hostile values reach the remote program as exactly one literal argument each; nothing runs."""
from __future__ import annotations

import json
import os
import pathlib

from launch.fake_gcloud import FakeGcloud, make_repo

NASTY = [
    "two words", "it's", 'say "hi"', "a;touch PWNED", "$(touch PWNED)", "`touch PWNED`",
    "line1\nline2; touch PWNED", "$HOME ${HOME} *", "back\\slash", "' \" ; $(touch PWNED) '\"",
    "--not-a-flag", "",
]
ALL = " | ".join(NASTY)


def test_hostile_values_arrive_literally(tmp_path):
  fake = FakeGcloud(tmp_path / "fake")
  repo = make_repo(tmp_path / "repo")
  remote_dir = "src dir $(touch PWNED) 'q'"
  workdir = f"/tmp/w d/{ALL}"
  sets = [f"k{i}={v}" for i, v in enumerate(NASTY)]
  flags_ = [f"--runs_dir={tmp_path / 'runs'}", "--poll_s=0.02", f"--remote_dir={remote_dir}"]
  proc = fake.cli(*flags_, "setup", cwd=repo)
  assert proc.returncode == 1 and "NOT_FOUND" in proc.stderr  # no TPU yet: error, no retry
  fake.update(resources={"gca-jax-v4-8": "ACTIVE"})
  proc = fake.cli(*flags_, "setup", cwd=repo)
  assert proc.returncode == 0, proc.stderr
  proc = fake.cli(
      *flags_, "run", f"--experiment={ALL}", f"--workdir={workdir}",
      *(f"--set={kv}" for kv in sets), f"--env=HOSTILE={ALL}", "--env=EMPTY=", "--wait",
      "--", *NASTY, cwd=repo)
  assert proc.returncode == 0, proc.stderr

  runs = [c for c in fake.remote_calls() if c["argv"][:2] == ["-m", "experiments.main"]]
  assert len(runs) == 2
  want = ["-m", "experiments.main", f"--experiment={ALL}", f"--workdir={workdir}",
          *(f"--set={kv}" for kv in sets), *NASTY]
  home = fake.remote_home("gca-jax-v4-8")
  for c in runs:
    assert c["argv"] == want
    assert c["env"]["HOSTILE"] == ALL and c["env"]["EMPTY"] == ""
    assert c["env"]["GCA_JAX_DISTRIBUTED"] == "1"
    assert c["cwd"] == str(home / remote_dir)
  record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
  assert record["experiment"] == ALL and record["set"] == sets and record["extra_args"] == NASTY
  assert record["env_keys"] == ["HOSTILE", "EMPTY"] and ALL not in json.dumps(record["env_keys"])
  pwned = [p for root in (tmp_path, pathlib.Path(os.getcwd())) for p in root.rglob("PWNED")]
  assert not pwned


def test_dry_run_lines_round_trip_through_shlex(tmp_path):
  fake = FakeGcloud(tmp_path / "fake")
  repo = make_repo(tmp_path / "repo")
  value = "it's $(touch PWNED) `x` ; \"q\""
  proc = fake.cli("--dry_run", "run", f"--experiment={value}", "--workdir=/w", cwd=repo)
  assert proc.returncode == 0, proc.stderr
  import shlex
  start = shlex.split(proc.stdout.splitlines()[-1])
  assert start[0] == "gcloud" and start[-1].startswith("--command=")
  assert fake.calls() == [] and not list(tmp_path.rglob("PWNED"))
