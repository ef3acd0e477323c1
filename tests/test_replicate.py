"""``make replicate``: confidence bounds against closed forms, and the single + 16M stages end to
end on tiny settings (fixture corpus, 4 steps) writing results.json in the demo's form."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.test_demo import REPO, SETS


def _replicate():
  from experiments import replicate
  return replicate


def test_wilson_bound_matches_closed_form():
  rep = _replicate()
  z = 1.959963984540054
  for hits, n in ((300, 300), (297, 300), (0, 10), (7, 10)):
    p = hits / n  # Wilson: (p + z^2/2n - z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    want = (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)
    assert rep.wilson_low(hits, n) == pytest.approx(max(0.0, want), abs=1e-12)


def test_clopper_pearson_bound_closed_forms():
  rep = _replicate()  # scipy comes with jax, so the exact bound is always available
  # all hits: the lower bound solves p^n = alpha/2; no hits: 0
  assert rep.clopper_pearson_low(300, 300) == pytest.approx(0.025 ** (1 / 300), rel=1e-9)
  assert rep.clopper_pearson_low(10, 10) == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
  assert rep.clopper_pearson_low(0, 10) == 0.0
  # one miss in n: P(X >= n-1 | p) = n p^(n-1) (1-p) + p^n = alpha/2 at the bound
  p = rep.clopper_pearson_low(299, 300)
  assert 300 * p ** 299 * (1 - p) + p ** 300 == pytest.approx(0.025, rel=1e-6)


def test_replicate_single_and_16m_stages(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(tmp_path / "cache"),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  workdir = tmp_path / "rep"
  cmd = [sys.executable, "-m", "experiments.replicate", f"--workdir={workdir}",
         f"--demo_workdir={tmp_path / 'no_demo'}", "--stages=single,16m",
         *(f"--set={s}" for s in SETS), "--multipliers=1,2", "--ppl_multipliers=1,2",
         "--samples=3", "--samples_16m=2", "--length_16m=500", "--ppl_windows=2"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  res = json.loads((workdir / "results.json").read_text())
  assert res["train_length"] == 120
  rows = {(r["model"], r["length"], r["samples"]): r for r in res["passkey"]}
  assert set(rows) == {("drt", 120, 3), ("drt", 240, 3), ("drt", 480, 2)}  # 500 -> 4 x 120
  for r in res["passkey"]:
    assert 0.0 <= r["ci95_low"] <= r["accuracy"] <= 1.0 and r["hits"] == round(r["accuracy"] * r["samples"])
  assert {(r["model"], r["length"]) for r in res["ppl"]} == {("drt", 120), ("drt", 240)}
  assert set(res["timings_seconds"]) == {"single", "16m"} and res["peak_rss_gb"]["16m"] > 0.1
  assert "| run | variant | length |" in (workdir / "results.md").read_text()
  # invalid stage: clear error, exit 2, nothing written
  bad = subprocess.run([sys.executable, "-m", "experiments.replicate", f"--workdir={tmp_path / 'x'}",
                        "--stages=single,bogus"], cwd=REPO, env=env, capture_output=True, text=True)
  assert bad.returncode == 2 and "bogus" in bad.stderr and not (tmp_path / "x").exists()
