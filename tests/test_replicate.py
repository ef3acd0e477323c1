"""``make replicate``: confidence bounds against closed forms, and the single + 16M stages end to
end on tiny settings (fixture corpus, 4 steps) writing results.json in the demo's form."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_demo import REPO, SETS, heldout_texts, train_corpus


def test_wilson_bound_reference_values():
  from experiments import replicate as rep
  z2 = 1.959963984540054 ** 2
  for n in (10, 300):  # all hits: the Wilson lower bound reduces to n / (n + z^2)
    assert rep.wilson_low(n, n) == pytest.approx(n / (n + z2), rel=1e-12)
  assert rep.wilson_low(0, 10) == 0.0
  assert rep.wilson_low(7, 10) == pytest.approx(0.3968, abs=1e-4)  # textbook 95% interval 0.397-0.892


def test_clopper_pearson_bound_closed_forms():
  from experiments import replicate as rep  # scipy comes with jax: the exact bound is available
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
         *(f"--set={s}" for s in [train_corpus(tmp_path), *SETS]), "--single_multipliers=1,2",
         "--ppl_multipliers=1,2", "--samples=3", "--samples_16m=2", "--length_16m=500",
         "--ppl_windows=2", f"--heldout={heldout_texts(tmp_path / 'manuals')}"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  res = json.loads((workdir / "results.json").read_text())
  assert res["train_length"] == 120
  rows = {(r["haystack"], r["length"], r["samples"]): r for r in res["passkey"]}
  assert set(rows) == {(h, n, k) for h in ("validation", "manuals")  # 500 -> 4 x 120
                       for n, k in ((120, 3), (240, 3), (480, 2))}
  for r in res["passkey"]:
    assert 0.0 <= r["ci95_low"] <= r["accuracy"] <= 1.0 and r["hits"] == round(r["accuracy"] * r["samples"])
  assert {(r["haystack"], r["length"]) for r in res["ppl"]} == {
      (h, n) for h in ("validation", "manuals") for n in (120, 240)}
  assert all(r["ppl_change_pct"] == 0.0 for r in res["ppl"] if r["length"] == 120)
  assert set(res["timings_seconds"]) == {"single", "16m"} and res["peak_rss_gb"]["16m"] > 0.1
  md = (workdir / "results.md").read_text()
  assert "| run | variant | haystack | length |" in md and "manuals (unseen)" in md
  # a finished run is reused under other execution settings (they are not the model's identity)
  again = subprocess.run([*[c for c in cmd if not c.startswith("--demo_workdir")], f"--demo_workdir={workdir}",
                          "--stages=single", "--haystacks=manuals", "--set=execution.retrieval_block=8",
                          "--set=execution.cpu_compiler_options=default"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "reusing the finished demo run" in again.stdout + again.stderr
  again_res = json.loads((workdir / "results.json").read_text())  # --haystacks: only the unseen family
  assert {r["haystack"] for r in again_res["passkey"] + again_res["ppl"]} == {"manuals"}
  # invalid stage: clear error, exit 2, nothing written
  bad = subprocess.run([sys.executable, "-m", "experiments.replicate", f"--workdir={tmp_path / 'x'}",
                        "--stages=single,bogus"], cwd=REPO, env=env, capture_output=True, text=True)
  assert bad.returncode == 2 and "bogus" in bad.stderr and not (tmp_path / "x").exists()
  bad_hay = subprocess.run([sys.executable, "-m", "experiments.replicate", f"--workdir={tmp_path / 'x'}",
                            "--stages=single", "--haystacks=validation,nope"], cwd=REPO, env=env,
                           capture_output=True, text=True)
  assert bad_hay.returncode == 2 and "nope" in bad_hay.stderr and not (tmp_path / "x").exists()
