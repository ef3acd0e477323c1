"""Passkey and perplexity evaluations end to end on a random tiny model, reports, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gca_jax.config import Experiment, ModelConfig, DataConfig, to_dict
from gca_jax.evals import cli, passkey, perplexity, runtime
from gca_jax.evals.haystack import ByteTokenizer, random_haystack, window
from gca_jax.evals.templates import Templates
from gca_jax.model import build_model

V = 384
CFG = ModelConfig(vocab_size=V)  # chunk 15, window 32, 1 group
TEMPLATES = {"single": Templates("|key {key}|", "|key? "), "multihop": Templates("|{a}>{b}|", "|P{a}:"),
             "multi": Templates("|{a}={b}|", "|V{a}:")}


@pytest.fixture(scope="module")
def setup():
  model = build_model(CFG, rngs=nnx.Rngs(0))
  return model, ByteTokenizer(V), random_haystack(50_000, V, avoid=(CFG.lmk_id,)), {}


def test_layout_anti_leak_and_scoring_match_forward(setup):
  model, tok, hay, engines = setup
  n = 301  # not a multiple of the chunk: left-padded so the layout's last chunk is the model's
  s = [passkey.build_sample(hay, n, runtime.sample_rng(0, n, i), tok, "multihop", None, CFG,
                            TEMPLATES["multihop"]) for i in range(2)]
  a0, kp = int(s[0]["answer_start"]), int(s[0]["key_pos"])
  assert a0 == n - CFG.chunk_size + 1 and kp == a0 + int(s[0]["answer_len"]) - 1
  x, pad = passkey.model_inputs(s[0], CFG)
  assert pad == (-n) % CFG.chunk_size and len(x) % CFG.chunk_size == 0
  assert x[kp + pad] == 0 and s[0]["tokens"][kp] != 0  # anti-leak
  assert (a0 - 1 + pad) % CFG.chunk_size == 0  # the question ends the second-to-last chunk's data
  eng = runtime.engine_for(model, engines, n, 1024, False)
  hit, exact = passkey.score_batch(model, eng, s)
  xs = np.stack([passkey.model_inputs(t, CFG)[0] for t in s])
  logits = np.asarray(model.forward(jnp.asarray(xs))["logits"])
  truth = np.stack([t["tokens"] for t in s])
  np.testing.assert_array_equal(hit, np.argmax(logits[:, kp - 1 + pad], -1) == truth[:, kp])
  # greedy decoding reproduces the answer iff every teacher-forced argmax on the true input does
  tf = np.stack([np.concatenate([np.full(pad, CFG.pad_id, np.int32), t["tokens"]]) for t in s])
  tl = np.asarray(model.forward(jnp.asarray(tf))["logits"])
  a_len = int(s[0]["answer_len"])
  pred = np.argmax(tl[:, a0 - 1 + pad:a0 - 1 + pad + a_len], -1)
  want = np.all(pred == truth[:, a0:a0 + a_len], 1)
  np.testing.assert_array_equal(exact, want)


def _flags(workdir, **kw):
  base = dict(workdir=str(workdir), lengths="300,450", samples=2, variant="single", passkey_tokens=0,
              haystack="", needle_template=None, question_template=None, eval_seed=0,
              segment_chunks=64, eval_batch=2, offload=False, random_init=True, tokenizer="bytes",
              memory_budget_gb=20.0, ppl_windows=2, prompt="hello", max_new_tokens=5,
              temperature=0.0, top_k=0)
  base.update(kw)
  return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  d = tmp_path_factory.mktemp("run")
  exp = Experiment(model=CFG, data=DataConfig(vocab_size=V))
  (d / "experiment.json").write_text(json.dumps(to_dict(exp)))
  text = "".join(f"line {i} of some plain haystack text.\n" for i in range(800))
  (d / "hay.txt").write_text(text)
  return d


def test_cli_passkey_and_ppl_outputs(workdir):
  t = TEMPLATES["single"]
  out = cli.eval_passkey_main(_flags(workdir, haystack=str(workdir / "hay.txt"),
                                     needle_template=t.needle, question_template=t.question))
  rows = json.loads((workdir / "evals" / "passkey_single.json").read_text())
  assert [r["length"] for r in rows] == [300, 450]
  for r in rows:
    assert r["samples"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and "exact_match" in r and r["model"]
  for k in ("markdown", "plot"):
    assert epath_exists(out[k])
  # the answer length defaults to what the run was trained with, for the variant it trained on
  exp = json.loads((workdir / "experiment.json").read_text())
  trained = dict(exp, data=dict(exp["data"], passkey="single", passkey_tokens=3))
  other = _run_folder(workdir, "trained", trained)
  for kw, want in (({}, 3), ({"passkey_tokens": 4}, 4), ({"variant": "multi"}, 5)):
    cli.eval_passkey_main(_flags(other, haystack=str(workdir / "hay.txt"), lengths="450", **kw))
    rows = json.loads((other / "evals" / f"passkey_{kw.get('variant', 'single')}.json").read_text())
    assert rows[0]["answer_tokens"] == want, (kw, rows[0])
  out = cli.eval_ppl_main(_flags(workdir, haystack=str(workdir / "hay.txt"), lengths="256,400,99999"))
  rows = json.loads((workdir / "evals" / "ppl.json").read_text())
  assert [r["length"] for r in rows] == [256, 400, 99999]
  assert all(r["ppl"] > 1 for r in rows[:2]) and rows[2]["not_run"] and "fewer" in rows[2]["reason"]
  assert epath_exists(out["plot"]) and "| length" in open(out["markdown"]).read().replace("| model | length", "| length")
  out = cli.generate_main(_flags(workdir, prompt="line 1 of", max_new_tokens=4))
  assert len(json.loads(open(out["json"]).read())[0]["tokens"]) == 4


def _run_folder(workdir, name: str, experiment: dict):
  """A sibling run folder holding ``experiment`` as its experiment.json."""
  d = workdir / name
  d.mkdir(exist_ok=True)
  (d / "experiment.json").write_text(json.dumps(experiment))
  return d


def epath_exists(p) -> bool:
  import os
  return os.path.exists(p) and os.path.getsize(p) > 0


def test_ppl_matches_forward_and_baselines(setup):
  model, _, hay, engines = setup
  win = np.asarray(hay[:400], np.int32).reshape(2, 200)
  eng = runtime.engine_for(model, engines, 301, 1024, False)  # the engine of the layout test
  s, c = perplexity.window_nll(model, eng, win)
  logp = jax.nn.log_softmax(model.forward(jnp.asarray(win))["logits"][:, :-1], -1)
  ref = -np.asarray(jnp.take_along_axis(logp, jnp.asarray(win[:, 1:])[..., None], -1)).sum()
  assert c == 2 * 199 and abs(s - ref) < 1e-4 * abs(ref)
  full = build_model(dataclasses.replace(CFG, model_type="full_attention"), rngs=nnx.Rngs(1))
  rows = perplexity.perplexity_eval(full, hay, [128, 40_000], max_windows=1, budget_gb=0.3, log=lambda *_: None)
  assert rows[0]["ppl"] > 1 and rows[1]["not_run"] and "budget" in rows[1]["reason"]


def test_full_attention_exact_match_equals_greedy_decoding(setup):
  """The two-forward full-attention scoring against token-by-token greedy decoding."""
  _, tok, hay, _ = setup
  full = build_model(dataclasses.replace(CFG, model_type="full_attention"), rngs=nnx.Rngs(1))
  s = [passkey.build_sample(hay, 150, np.random.default_rng(i), tok, "single", 3, CFG) for i in range(2)]
  x = np.stack([passkey.model_inputs(t, CFG)[0] for t in s])
  truth = np.stack([t["tokens"] for t in s])
  a0, n, kp = int(s[0]["answer_start"]), int(s[0]["answer_len"]), int(s[0]["key_pos"])

  def greedy(prefix):
    out = []
    for _ in range(n):
      nxt = int(np.argmax(np.asarray(full.forward(jnp.asarray(prefix[None]))["logits"])[0, -1]))
      out.append(nxt)
      prefix = np.append(prefix, nxt).astype(np.int32)
    return np.array(out)

  truth[0, a0:a0 + n] = greedy(truth[0, :a0])  # sample 0's answer is what greedy decoding gives
  truth[1, a0:a0 + n] = (greedy(truth[1, :a0]) + 1) % (V - 1)  # sample 1's never matches
  x[:, :a0 + n] = truth[:, :a0 + n]
  x[:, kp] = 0
  hit, exact = passkey._score_full(full, x, truth, kp, 0, a0, n)
  np.testing.assert_array_equal(exact, [True, False])
  ref_hit = np.argmax(np.asarray(full.forward(jnp.asarray(x))["logits"])[:, kp - 1], -1) == truth[:, kp]
  np.testing.assert_array_equal(hit, ref_hit)


def test_haystack_window_wraps():
  hay = np.array([10, 11, 12, 13, 14], np.int32)
  np.testing.assert_array_equal(window(hay, 3, 12), [13, 14, 10, 11, 12, 13, 14, 10, 11, 12, 13, 14])
  np.testing.assert_array_equal(window(hay, 7, 2), [12, 13])  # start wraps too
  big = window(np.arange(64, dtype=np.int32), 5, 1 << 24)  # 16M over 64: seconds, not minutes
  assert big.shape == (1 << 24,) and big[0] == 5 and big[-1] == (5 + (1 << 24) - 1) % 64


def test_bad_inputs(workdir, setup):
  model, tok, hay, _ = setup
  with pytest.raises(ValueError, match="bad length"):
    runtime.parse_lengths("12,abc")
  with pytest.raises(ValueError, match="too short|invalid"):
    passkey.check_lengths([40], tok, "single", None, CFG, TEMPLATES["single"])
  with pytest.raises(cli.EvalError, match="variant"):
    cli.eval_passkey_main(_flags(workdir, variant="nope"))
  with pytest.raises(cli.EvalError, match="experiment.json"):
    cli.eval_ppl_main(_flags(workdir / "missing"))
  from gca_jax.checkpoint import CheckpointError
  with pytest.raises(CheckpointError, match="no checkpoints"):
    cli.load_model(Experiment(model=CFG, data=DataConfig(vocab_size=V)), workdir, False)
  with pytest.raises(ValueError, match="needle template"):
    passkey.check_lengths([300], tok, "single", None, CFG, Templates("|no placeholder|", None))
  with pytest.raises(FileNotFoundError):
    cli.eval_passkey_main(_flags(workdir, haystack=str(workdir / "nope.txt"),
                                 needle_template="|key {key}|", question_template="|key? "))
