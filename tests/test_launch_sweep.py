"""Sweeps run their specs one after another on one TPU; --sweep goes through experiments.registry."""
from __future__ import annotations

import json

import pytest

from launch import sweep
from launch.errors import LaunchError
from launch.fake_gcloud import FakeGcloud, make_repo

NAME = "gca-jax-v4-8"


def _program_argvs(fake):
  return [c["argv"] for c in fake.remote_calls() if c["argv"][:2] == ["-m", "experiments.main"]]


def test_grid_sweep_runs_each_spec_in_order(tmp_path):
  fake = FakeGcloud(tmp_path / "fake", workers=1)
  repo = make_repo(tmp_path / "repo")
  fake.update(resources={NAME: "ACTIVE"})
  runs = tmp_path / "runs"
  common = [f"--runs_dir={runs}", "--poll_s=0.02"]
  assert fake.cli(*common, "setup", cwd=repo).returncode == 0
  proc = fake.cli(*common, "sweep", "--experiment=tiny", "--workdir=gs://b/sw", "--set=fixed=1",
                  "--grid=gca.top_k=2,4", "--grid=gca.chunk=64,128", cwd=repo)
  assert proc.returncode == 0, proc.stderr
  argvs = _program_argvs(fake)
  grid = [a[5:] for a in argvs]
  assert grid == [["--set=gca.top_k=2", "--set=gca.chunk=64"], ["--set=gca.top_k=2", "--set=gca.chunk=128"],
                  ["--set=gca.top_k=4", "--set=gca.chunk=64"], ["--set=gca.top_k=4", "--set=gca.chunk=128"]]
  assert all(a[4] == "--set=fixed=1" for a in argvs)
  workdirs = [a[3] for a in argvs]
  assert len(set(workdirs)) == 4 and all(w.startswith("--workdir=gs://b/sw/tiny_") for w in workdirs)
  records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
  assert len(records) == 4 and {r["status"] for r in records} == {"succeeded"}
  assert {r["sweep"] for r in records} == {"tiny"}
  assert [c[3] for c in fake.calls()].count("create") == 0


def test_failed_spec_stops_the_sweep_unless_keep_going(tmp_path):
  fake = FakeGcloud(tmp_path / "fake", workers=1)
  repo = make_repo(tmp_path / "repo")
  fake.update(resources={NAME: "ACTIVE"})
  args = [f"--runs_dir={tmp_path / 'runs'}", "--poll_s=0.02", "sweep", "--experiment=e",
          "--workdir=/w", "--grid=k=1,2"]
  fake.cli(args[0], "setup", cwd=repo)
  proc = fake.cli(*args, cwd=repo, env={"FAKE_PROGRAM_EXIT": "1"})
  assert proc.returncode == 1 and "1 failed run" in proc.stderr
  assert len(_program_argvs(fake)) == 1
  proc = fake.cli(*args, "--keep_going", cwd=repo, env={"FAKE_PROGRAM_EXIT": "1"})
  assert proc.returncode == 1 and "2 failed run" in proc.stderr


def test_unknown_named_sweep_is_a_clear_error(tmp_path):
  fake = FakeGcloud(tmp_path / "fake")
  repo = make_repo(tmp_path / "repo")
  proc = fake.cli("sweep", "--sweep=ablate", "--workdir=/w", cwd=repo)
  assert proc.returncode == 1
  assert "unknown sweep 'ablate'" in proc.stderr and "chunk_topk" in proc.stderr  # lists valid sweeps
  assert fake.calls() == []


def test_named_sweep_uses_expand_sweep(tmp_path):
  fake = FakeGcloud(tmp_path / "fake")
  repo = make_repo(tmp_path / "repo")
  (repo / "experiments").mkdir()
  (repo / "experiments" / "__init__.py").write_text("")
  (repo / "experiments" / "registry.py").write_text(
      "def expand_sweep(name):\n"
      "  assert name == 'ablate'\n"
      "  return [{'experiment': 'a', 'overrides': {'gca.top_k': 4, 'flag': True}}, 'b',\n"
      "          ('c', ['x=1'])]\n")
  proc = fake.cli("--dry_run", "sweep", "--sweep=ablate", "--workdir=/w", "--set=s=0", cwd=repo)
  assert proc.returncode == 0, proc.stderr
  starts = [l for l in proc.stdout.splitlines() if "experiments.main" in l]
  assert len(starts) == 3
  assert "--set=gca.top_k=4" in starts[0] and "--set=flag=true" in starts[0]
  assert "--experiment=b" in starts[1] and "--set=x=1" in starts[2]


def test_spec_helpers():
  assert sweep.grid("e", [], ["a=1,2"]) == [sweep.Spec("e", ("a=1",)), sweep.Spec("e", ("a=2",))]
  s = sweep.Spec("e", ("a=x/y z",))
  assert s.slug() == sweep.Spec("e", ("a=x/y z",)).slug() != sweep.Spec("e", ("a=x/yz",)).slug()
  assert "/" not in s.slug() and " " not in s.slug()
  assert sweep.join_workdir("gs://b/x/", s) == f"gs://b/x/{s.slug()}"
  for bad in (["a"], ["=1"], ["a="]):
    with pytest.raises(LaunchError):
      sweep.grid("e", [], bad)
