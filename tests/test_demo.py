"""``make demo`` orchestration end to end on tiny settings (fixture corpus, 4 steps, 2 lengths):
the results.json schema, the table and plot, and that a rerun reuses the run and the evals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from experiments.registry import TINY_CORPUS, get_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 384
SETS = [f"data.corpus={TINY_CORPUS}", f"data.vocab_size={V}", f"model.vocab_size={V}",
        "data.val_fraction=0.3", "data.seq_len=120", "data.batch_size=4", "train.steps=4",
        "train.log_every=2", "checkpoint.every=4", "model.d_model=32", "model.mlp_dim=64"]


def _run(workdir, cache, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(cache),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "experiments.demo", f"--workdir={workdir}",
         *(f"--set={s}" for s in SETS), "--multipliers=1,2", "--ppl_multipliers=1,2",
         "--passkey_samples=2", "--passkey_long_samples=1", "--ppl_windows=2", *extra]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def test_demo_experiments_are_registered():
  for name in ("demo_drt", "demo_sliding_window", "demo_full_attention"):
    exp = get_experiment(name)
    assert exp.data.passkey == "single" and exp.data.layout_chunk == exp.model.chunk_size
    assert exp.data.seq_len <= 512 and exp.train.answer_loss_weight > 0
  assert get_experiment("demo_drt").model.model_type == "drt"


def test_demo_writes_results_and_reuses_finished_stages(tmp_path):
  workdir, cache = tmp_path / "demo", tmp_path / "cache"
  out = _run(workdir, cache)
  res = json.loads((workdir / "results.json").read_text())
  assert res["train_length"] == 120
  assert {(r["model"], r["length"]) for r in res["passkey"]} == {("drt", 120), ("drt", 240)}
  for r in res["passkey"]:
    assert set(r) >= {"model", "length", "samples", "accuracy"} and r["samples"] == 2
    assert 0.0 <= r["accuracy"] <= 1.0
  assert {(r["model"], r["length"]) for r in res["ppl"]} == {("drt", 120), ("drt", 240)}
  assert all(r["ppl"] > 1.0 for r in res["ppl"])
  assert (workdir / "results.png").stat().st_size > 0 and "| length |" in out
  assert (workdir / "demo_drt" / "summary.json").exists()
  out2 = _run(workdir, cache)  # nothing left to do: the run and every eval are reused
  assert "reusing it" in out2 and "step 1/" not in out2
  assert json.loads((workdir / "results.json").read_text())["passkey"] == res["passkey"]
