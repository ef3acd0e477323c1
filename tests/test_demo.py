"""``make demo`` orchestration end to end on tiny settings (fixture corpus, 4 steps, 2 lengths):
the results.json schema with both haystacks (validation split and an unseen family), the table
and plot, perplexity change from 1x against the rows' own values, and that a rerun reuses the
run and the evals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from experiments.registry import TINY_CORPUS, get_experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 384
SETS = [f"data.vocab_size={V}", f"model.vocab_size={V}", "data.val_fraction=0.3", "data.seq_len=120", "data.batch_size=4", "train.steps=4",
        "data.curriculum=90x4:2",
        "train.log_every=2", "checkpoint.every=4", "model.d_model=32", "model.mlp_dim=64"]


def train_corpus(tmp_path) -> str:
  """The fixture corpus plus one file of digits: the 384-piece tokenizer keeps every digit as a
  piece only if each is frequent enough (the fixture has few zeros)."""
  folder = tmp_path / "tiny_corpus"
  if not folder.exists():
    shutil.copytree(TINY_CORPUS, folder)
    (folder / "digits.txt").write_text("\n".join(f"Number {i:05d} is {i * 37 % 100000:05d}."
                                               for i in range(300)))
  return f"data.corpus={folder}"


def heldout_texts(folder) -> str:
  """An unseen text family for the tiny runs: a few files of prose unlike the fixture corpus."""
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(3):
    (folder / f"manual{i}.txt").write_text("\n".join(
        f"Section {i}.{j}: the option --level={j} sets the level of table t{i} to {j * 7}."
        for j in range(40)))
  return str(folder)


def _run(workdir, cache, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(cache),
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "experiments.demo", f"--workdir={workdir}",
         *(f"--set={s}" for s in [train_corpus(workdir.parent), *SETS]), "--multipliers=1,2", "--ppl_multipliers=1,2",
         "--passkey_samples=2", "--passkey_long_samples=1", "--ppl_windows=2",
         f"--heldout={heldout_texts(workdir.parent / 'manuals')}", *extra]
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
  both = {(h, n) for h in ("validation", "manuals") for n in (120, 240)}
  assert {(r["haystack"], r["length"]) for r in res["passkey"]} == both
  for r in res["passkey"]:
    assert set(r) >= {"model", "haystack", "length", "samples", "accuracy"} and r["samples"] == 2
    assert r["model"] == "drt" and 0.0 <= r["accuracy"] <= 1.0
  assert {(r["haystack"], r["length"]) for r in res["ppl"]} == both
  assert res["haystacks"]["manuals"]["unseen"] and not res["haystacks"]["validation"]["unseen"]
  ppl = {(r["haystack"], r["length"]): r for r in res["ppl"]}
  for h in ("validation", "manuals"):
    assert ppl[(h, 120)]["ppl"] > 1.0 and ppl[(h, 120)]["ppl_change_pct"] == 0.0
    want = 100 * (ppl[(h, 240)]["ppl"] / ppl[(h, 120)]["ppl"] - 1)
    assert abs(ppl[(h, 240)]["ppl_change_pct"] - want) < 1e-9
    assert abs(res["drt_ppl_change_longest_vs_1x"][h] - want / 100) < 1e-12
  assert ppl[("validation", 120)]["ppl"] != ppl[("manuals", 120)]["ppl"]  # different tokens
  assert (workdir / "results.png").stat().st_size > 0 and "| length |" in out
  assert "passkey drt, validation" in out and "passkey drt, manuals (unseen)" in out
  assert (workdir / "demo_drt" / "summary.json").exists()
  # the inputs beyond the experiment: host facts, and no package archives for users' own texts
  assert res["provenance"]["host"]["cpu_count"] == os.cpu_count()
  assert res["provenance"]["corpora"]["manuals"] is None and len(res["provenance"]["corpora"]) == 2
  summary = json.loads((workdir / "demo_drt" / "summary.json").read_text())
  assert summary["host"]["cpu_count"] == os.cpu_count()
  out2 = _run(workdir, cache)  # nothing left to do: the run and every eval are reused
  assert "reusing it" in out2 and "step 1/" not in out2
  assert json.loads((workdir / "results.json").read_text())["passkey"] == res["passkey"]
  # experiments.score_run: one finished run, both haystacks, lengths in tokens
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(cache))
  score = [sys.executable, "-m", "experiments.score_run", f"--run={workdir / 'demo_drt'}", "--samples=3",
           f"--heldout={workdir.parent / 'manuals'}"]
  bad = subprocess.run([*score, "--lengths=130"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "not multiples of the run's training length 120" in bad.stderr
  assert not (workdir / "demo_drt" / "score_run.json").exists()
  ok = subprocess.run([*score, "--lengths=120,240"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  rows = json.loads((workdir / "demo_drt" / "score_run.json").read_text())
  assert [(r["haystack"], r["length"], r["samples"]) for r in rows] == [
      (h, n, 3) for h in ("validation", "manuals") for n in (120, 240)]
  assert all(0.0 <= r["accuracy"] <= 1.0 and r["run"] == "demo_drt" for r in rows)


def test_heldout_family_must_be_unseen(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(tmp_path / "cache"))
  proc = subprocess.run([sys.executable, "-m", "experiments.demo", f"--workdir={tmp_path / 'd'}",
                         "--set=data.corpus=books_manuals", "--heldout=books"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "shares" in proc.stderr and "austen" in proc.stderr


def test_eval_cache_keeps_rows_of_another_process(tmp_path):
  """Two caches on one file (two replicate stages side by side) each write a row: the file holds
  both, and neither write drops the other's."""
  from experiments import demo as demo_mod
  path = str(tmp_path / "eval_cache.json")
  a, b = demo_mod.EvalCache(path), demo_mod.EvalCache(path)
  a.put("passkey|x|L120", {"accuracy": 1.0})
  b.put("ppl|y|L240", {"ppl": 3.0})
  a.put("passkey|x|L240", {"accuracy": 0.5})
  assert demo_mod.EvalCache(path).rows == {"passkey|x|L120": {"accuracy": 1.0}, "ppl|y|L240": {"ppl": 3.0},
                                           "passkey|x|L240": {"accuracy": 0.5}}


def test_eval_cache_rows_belong_to_the_run_they_scored(tmp_path, monkeypatch):
  """A cached perplexity is reused for the same run under other execution settings, but not
  for a run of the same name trained under other settings (another learning rate)."""
  import dataclasses

  import numpy as np

  from experiments import demo as demo_mod
  from gca_jax.evals import perplexity
  scored = []

  def fake_eval(model, hay, lengths, **kw):
    scored.append(lengths[0])
    return [{"ppl": float(len(scored)), "nll": 0.0, "windows": 1, "tokens": lengths[0], "seconds": 0.0}]

  monkeypatch.setattr(perplexity, "perplexity_eval", fake_eval)
  monkeypatch.setattr(demo_mod, "_model", lambda *a, **k: None)
  cache = demo_mod.EvalCache(str(tmp_path / "eval_cache.json"))
  exp = get_experiment("lm_drt")
  hay = np.zeros(exp.data.seq_len * 4, np.int32)
  ppl = lambda e: demo_mod.ppl_rows("drt", e, str(tmp_path), 1500, cache, hay, [1], 4)[0]["ppl"]
  assert ppl(exp) == 1.0
  assert ppl(dataclasses.replace(exp, execution=dataclasses.replace(exp.execution, remat=True))) == 1.0
  assert ppl(dataclasses.replace(exp, optim=dataclasses.replace(exp.optim, lr=6e-3))) == 2.0
  assert ppl(exp) == 1.0 and len(scored) == 2


def test_same_experiment_ignores_execution_and_reads_old_json(tmp_path):
  """A workdir's run is the same experiment under other execution settings, also when its
  experiment.json is of the older form (execution keys inside ``model``, no new execution keys);
  a different model, data or step count is not."""
  from experiments import demo as demo_mod
  from gca_jax.config import apply_overrides, to_dict
  exp = get_experiment("demo_drt")
  d = json.loads(json.dumps(to_dict(exp)))
  old = {**d, "model": {**d["model"], "remat": True, "attn_block": 16},
         "optim": {k: v for k, v in d["optim"].items() if k != "grad_accum"},  # absent: its default (1)
         "execution": {k: v for k, v in d["execution"].items() if k not in ("remat", "attn_block", "cpu_compiler_options")}}
  (tmp_path / "experiment.json").write_text(json.dumps(old))
  assert demo_mod.same_experiment(exp, str(tmp_path))
  assert demo_mod.same_experiment(apply_overrides(exp, ["execution.cpu_compiler_options=default"]), str(tmp_path))
  for change in ("model.top_k=4", "data.seq_len=240", "train.steps=1201", "optim.restart_each_stage=false"):
    assert not demo_mod.same_experiment(apply_overrides(exp, [change]), str(tmp_path)), change
  assert not demo_mod.same_experiment(exp, str(tmp_path / "missing"))
