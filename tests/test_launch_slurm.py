"""The generated sbatch script: bash syntax, directives, and a run under fake scontrol/srun."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch import slurm
from launch.errors import LaunchError

NASTY = "it's $(touch PWNED) `x`;\n\"q\""

FAKE_SRUN = f"""#!{sys.executable} -IS
import os, subprocess, sys
args = sys.argv[1:]
while args[0].startswith("--"):
  args.pop(0)
for rank in range(int(os.environ["FAKE_NODES"])):
  subprocess.run(args, env=dict(os.environ, SLURM_PROCID=str(rank)), check=True)
"""
FAKE_PYTHON = f"""#!{sys.executable} -IS
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as f:
  f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
"""


def _exe(path, text):
  path.write_text(text)
  path.chmod(0o755)


def test_script_is_valid_and_runs_each_rank_with_literal_args(tmp_path):
  text = slurm.render(nodes=2, gpus_per_node=8, experiment=NASTY, workdir=f"/w/{NASTY}",
                      sets=[f"k={NASTY}"], env=[("TOKEN", NASTY)], extra=["--mode=eval", NASTY],
                      partition="gpu", time="01:00:00", chdir=str(tmp_path))
  script = tmp_path / "job.sbatch"
  script.write_text(text)
  subprocess.run(["bash", "-n", str(script)], check=True)
  assert text.startswith("#!/bin/bash\n")
  for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "export GCA_JAX_DISTRIBUTED=1"):
    assert line in text.splitlines()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _exe(bin_dir / "scontrol", "#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n")
  _exe(bin_dir / "srun", FAKE_SRUN)
  _exe(bin_dir / "python", FAKE_PYTHON)
  log = tmp_path / "calls.jsonl"
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_NODES="2",
             FAKE_LOG=str(log), SLURM_JOB_NODELIST="node-[a-b]", SLURM_JOB_NUM_NODES="2")
  subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path, capture_output=True)
  calls = [json.loads(l) for l in log.read_text().splitlines()]
  assert [c["env"]["GCA_PROCESS_ID"] for c in calls] == ["0", "1"]
  for c in calls:
    assert c["argv"] == ["-m", "experiments.main", f"--experiment={NASTY}",
                         f"--workdir=/w/{NASTY}", f"--set=k={NASTY}", "--mode=eval", NASTY]
    assert c["env"]["GCA_COORDINATOR_ADDRESS"] == "node-a:12355"
    assert c["env"]["GCA_NUM_PROCESSES"] == "2" and c["env"]["TOKEN"] == NASTY
    assert c["env"]["GCA_JAX_DISTRIBUTED"] == "1"
  assert not list(tmp_path.rglob("PWNED"))


def test_bad_values_are_rejected():
  with pytest.raises(LaunchError):
    slurm.render(nodes=0, gpus_per_node=8, experiment="e", workdir="/w")
  with pytest.raises(LaunchError, match="job_name"):
    slurm.render(nodes=1, gpus_per_node=1, experiment="e", workdir="/w", job_name="a b\n#x")


def test_cli_writes_script_and_reports_missing_flags(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(slurm.__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  out = tmp_path / "job.sbatch"
  proc = subprocess.run([sys.executable, "-m", "launch.slurm", "--nodes=2", "--gpus_per_node=4",
                         "--experiment=e", "--workdir=/w", f"--output={out}"],
                        env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert "#SBATCH --gpus-per-node=4" in out.read_text()
  proc = subprocess.run([sys.executable, "-m", "launch.slurm", "--nodes=2"], env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 1 and "--gpus_per_node" in proc.stderr and "--workdir" in proc.stderr
