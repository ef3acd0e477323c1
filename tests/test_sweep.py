"""Sweep reports and dry runs: fake run folders aggregate to hand-computed rows; --dry_run lists
deterministic runs and writes nothing; an unknown sweep exits 2. No training."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from experiments import aggregate
from experiments.registry import expand_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(tmp_path, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(tmp_path / "cache"))
  env.pop("GCA_JAX_DISTRIBUTED", None)
  return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def _fake_run(run_dir, losses, evals, passkey=None, done=True):
  """metrics.jsonl with train rows (step, loss) and eval rows; optional passkey JSON files."""
  run_dir.mkdir(parents=True)
  rows = [{"step": s, "loss": l, "lr": 1e-3} for s, l in losses]
  rows += [{"step": s, "eval_loss": l, "eval_ppl": math.exp(l), "eval_tokens": 100.0}
           for s, l in evals]
  rows.sort(key=lambda r: r["step"])
  text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "lo'  # torn last line
  (run_dir / "metrics.jsonl").write_text(text)
  if done:
    (run_dir / "summary.json").write_text(json.dumps({"preempted": False}))
  for variant, prow in (passkey or {}).items():
    (run_dir / "evals").mkdir(exist_ok=True)
    (run_dir / "evals" / f"passkey_{variant}.json").write_text(json.dumps(prow))


@pytest.fixture
def sweep_dir(tmp_path):
  runs = expand_sweep("chunk_topk")
  d = tmp_path / "sweep"
  _fake_run(d / runs[0].run_name, [(10, 5.0), (20, 4.5), (30, 4.25)], [(15, 4.8), (30, 4.0)],
            passkey={"single": [{"length": 256, "samples": 4, "accuracy": 0.75},
                                {"length": 1024, "samples": 4, "accuracy": 0.5}],
                     "multihop": [{"length": 256, "samples": 4, "accuracy": 0.25},
                                  {"length": 4096, "samples": 0, "accuracy": None,
                                   "not_run": True, "reason": "memory"}]})
  _fake_run(d / runs[1].run_name, [(10, 6.0), (20, 5.5)], [(20, 5.25)], done=False)
  _fake_run(d / runs[2].run_name, [(10, 3.0)], [])
  return d, runs


def test_rows_match_hand_computed_values(sweep_dir):
  d, runs = sweep_dir
  rows = aggregate.collect(d, runs)
  assert [r["run"] for r in rows] == [r.run_name for r in runs]
  r0, r1, r2 = rows[:3]
  assert (r0["status"], r0["step"], r0["final_loss"]) == ("done", 30, 4.25)
  assert r0["val_ppl"] == pytest.approx(math.exp(4.0)) and r0["val_loss"] == 4.0
  assert r0["passkey_single@256"] == 0.75 and r0["passkey_single@1024"] == 0.5
  assert r0["passkey_multihop@256"] == 0.25 and r0["passkey_multihop@4096"] is None
  assert r0["overrides"] == "model.chunk_size=7 model.top_k=2 model.window=32"
  assert (r1["status"], r1["step"], r1["final_loss"]) == ("partial", 20, 5.5)
  assert r1["val_ppl"] == pytest.approx(math.exp(5.25))
  assert not any(k.startswith("passkey_") for k in r1)
  assert (r2["final_loss"], r2["val_ppl"]) == (3.0, None)
  for r in rows[3:]:
    assert r["status"] == "not run" and r["not_run"] and r.get("val_ppl") is None
  assert aggregate.passkey_columns(rows) == ["passkey_multihop@256", "passkey_multihop@4096",
                                             "passkey_single@256", "passkey_single@1024"]


def test_report_files_and_table(sweep_dir):
  d, runs = sweep_dir
  paths = aggregate.aggregate(d, "chunk_topk", runs)
  assert set(paths) == {"json", "markdown", "plot"}
  assert json.loads((d / "sweep_chunk_topk.json").read_text()) == aggregate.collect(d, runs)
  assert (d / "sweep_chunk_topk.png").read_bytes()[:4] == b"\x89PNG"
  lines = (d / "sweep_chunk_topk.md").read_text().splitlines()
  header = [c.strip() for c in lines[2].strip("|").split("|")]
  assert header[:6] == aggregate.BASE_COLUMNS
  table = {c[0]: dict(zip(header, c)) for c in
           ([x.strip() for x in line.strip("|").split("|")] for line in lines[4:])}
  first = table["tiny_cpu-chunk7-topk2"]
  assert (first["final_loss"], first["val_ppl"], first["passkey_single@256"]) == (
      "4.25", f"{math.exp(4.0):.4g}", "0.75")
  assert first["passkey_multihop@4096"] == "-"
  assert table["tiny_cpu-chunk31-topk4"]["status"] == "not run"
  assert len(table) == len(runs)


def test_aggregate_mode_cli(sweep_dir, tmp_path):
  d, runs = sweep_dir
  proc = _cli(tmp_path, "--sweep=chunk_topk", f"--workdir={d}", "--mode=aggregate")
  assert proc.returncode == 0, proc.stderr
  assert "| tiny_cpu-chunk31-topk4 | not run |" in proc.stdout
  assert (d / "sweep_chunk_topk.md").exists() and (d / "sweep_chunk_topk.png").exists()


def test_dry_run_lists_runs_and_writes_nothing(tmp_path):
  w = tmp_path / "w"
  outs = [_cli(tmp_path, "--sweep=chunk_topk", "--dry_run", f"--workdir={w}",
               "--set=train.steps=3") for _ in range(2)]
  assert outs[0].returncode == 0, outs[0].stderr
  assert outs[0].stdout == outs[1].stdout  # deterministic
  lines = [l.split("\t") for l in outs[0].stdout.splitlines()[2:]]
  runs = expand_sweep("chunk_topk")
  assert [l[0] for l in lines] == [r.run_name for r in runs]
  for line, run in zip(lines, runs):
    assert line[1] == "tiny_cpu" and line[2] == str(w / run.run_name)
    assert line[3] == " ".join([*run.overrides, "train.steps=3"])
  assert not w.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args", [["--dry_run"], ["--mode=aggregate"], []])
def test_unknown_sweep_exits_2(tmp_path, args):
  proc = _cli(tmp_path, "--sweep=nope", f"--workdir={tmp_path / 'w'}", *args)
  assert proc.returncode == 2
  assert "unknown sweep 'nope'; registered sweeps: [" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_aggregate_mode_needs_a_sweep(tmp_path):
  proc = _cli(tmp_path, "--experiment=tiny_cpu", "--mode=aggregate", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2 and "needs --sweep" in proc.stderr
  assert not (tmp_path / "w").exists()
