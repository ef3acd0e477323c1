"""The replicate ``lm`` stage: equal parameter counts by hand, and on tiny settings every
perplexity row equal to a dense forward over the same tokens (an independent path: the stage
scores DRT and sliding window through the segmented engine)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from tests.test_demo import heldout_texts, train_corpus


def _hand_count(cfg) -> int:
  """Parameters of a DRT or a decoder baseline from the config, by hand (heads = kv heads)."""
  d, f, v = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
  layer = 4 * d * d + 3 * d * f + 2 * d  # attention, SwiGLU, two norms
  if cfg.model_type != "drt":
    return v * d + d + cfg.num_layers * layer
  groups = len(cfg.upper_layers)
  upper = layer + d + 2 * d * d  # + the GCA's norm, query and output projections
  return (v * d + d + (cfg.lower_layers + cfg.encoder_layers) * layer + 2 * d  # encoder norms
          + 2 * d * d + groups * d + sum(cfg.upper_layers) * upper)  # chunk K/V, landmark norms


def test_lm_models_have_equal_parameter_counts():
  from flax import nnx

  from experiments import lm_stage
  from experiments.registry import get_experiment
  from gca_jax.model import build_model, count_params
  counts = {}
  for model, name in {**lm_stage.MODELS, **lm_stage.EXTRA}.items():
    cfg = get_experiment(name).model
    built = nnx.eval_shape(lambda cfg=cfg: build_model(cfg, rngs=nnx.Rngs(0)))
    counts[model] = count_params(built)
    assert counts[model] == _hand_count(cfg), model
  assert counts["drt"] == 246_592 and counts["sliding_window_narrow"] == 229_952
  assert get_experiment("lm_sliding_window_narrow").model.mlp_dim == get_experiment("lm_drt").model.mlp_dim
  for m in ("sliding_window", "full_attention", "full_attention_rope"):
    assert abs(counts[m] / counts["drt"] - 1) < 0.002, counts
  assert get_experiment("lm_full_attention_rope").model.model_type == "full_attention_rope"


def _dense_ppl(model, tokens: np.ndarray, n: int) -> float:
  """exp(mean NLL) of ``tokens`` in windows of ``n`` by one dense forward each (float64 softmax)."""
  total, count = 0.0, 0
  for i in range(len(tokens) // n):
    win = tokens[i * n:(i + 1) * n]
    logits = np.asarray(model.forward(jax.numpy.asarray(win[None]))["logits"][0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    total -= logp[np.arange(n - 1), win[1:]].sum()
    count += n - 1
  return math.exp(total / count)


def test_lm_stage_rows_equal_dense_forward(tmp_path, monkeypatch):
  """The stage on random-init models (training is the demo's, tested there): every row is the
  dense forward's perplexity over the same tokens, for every model, length and haystack."""
  from flax import nnx

  from experiments import demo, lm_stage
  from experiments.registry import get_experiment
  from gca_jax.config import apply_overrides
  from gca_jax.model import build_model, count_params
  sets = [train_corpus(tmp_path), f"data.cache_dir={tmp_path / 'cache'}", "data.vocab_size=384",
          "model.vocab_size=384", "data.val_fraction=0.3", "data.seq_len=32", "model.d_model=32",
          "model.mlp_dim=48"]
  models = {}

  def fake_model(exp, run_dir, state):
    if "model" not in state:
      state["model"] = models.setdefault(exp.name, build_model(exp.model, rngs=nnx.Rngs(3)))
    return state["model"]
  monkeypatch.setattr(demo, "train", lambda exp, run_dir: {"parameters": count_params(
      build_model(exp.model, rngs=nnx.Rngs(3)))})
  monkeypatch.setattr(demo, "trained_step", lambda run_dir: 0)
  monkeypatch.setattr(demo, "_model", fake_model)
  cache = demo.EvalCache(str(tmp_path / "eval_cache.json"))
  out = lm_stage.run_stage(str(tmp_path / "rep"), sets, cache,
                           heldout=heldout_texts(tmp_path / "manuals"), multipliers=[1],
                           long_multipliers=[2], windows=2)
  rows = out["lm_ppl"]
  want = {(m, h, x) for h in ("validation", "manuals") for m in (*lm_stage.MODELS, lm_stage.ABLATED)
          for x in ((1, 2) if m in (*lm_stage.LONG, lm_stage.ABLATED) else (1,))}
  assert {(r["model"], r["haystack"], r["multiplier"]) for r in rows} == want
  assert out["lm_span_tokens"] == 32 * 2 * 2 and all(r["tokens"] == 128 - 128 // r["length"] for r in rows)
  exp = apply_overrides(get_experiment("lm_drt"), sets)
  from gca_jax.data import token_store, tokenizer
  tok = tokenizer.build_tokenizer(exp.data.corpus, 384, exp.data.cache_dir, log=lambda *_: None)
  store = token_store.token_store_for(exp.data.corpus, tok, exp.data.cache_dir, 0.3, log=lambda *_: None)
  hays = demo.haystacks(exp, tok, store, str(tmp_path / "manuals"), log=lambda *_: None)
  assert set(models) == set(lm_stage.MODELS.values())
  for model_name, name in lm_stage.MODELS.items():
    assert out["lm_models"][model_name]["parameters"] == count_params(models[name])
    for r in rows:
      if r["model"] == model_name:
        ref = _dense_ppl(models[name], np.asarray(hays[r["haystack"]][:128]), r["length"])
        assert r["ppl"] == pytest.approx(ref, rel=2e-4), r
  from gca_jax.model import without_retrieval
  ablated = without_retrieval(models["lm_drt"])
  for r in rows:
    if r["model"] == lm_stage.ABLATED:
      ref = _dense_ppl(ablated, np.asarray(hays[r["haystack"]][:128]), r["length"])
      assert r["ppl"] == pytest.approx(ref, rel=2e-4), r
      on = next(x for x in rows if (x["model"], x["haystack"], x["length"]) == ("drt", r["haystack"], r["length"]))
      assert abs(r["ppl"] / on["ppl"] - 1) > 1e-4, (r, on)  # the ablation is not the DRT itself
  md = lm_stage.markdown({**out, "lm_train_length": 32})
  assert md.count("| full_attention_rope |") == 2 and "manuals (unseen)" in md
  t = out["lm_targets"]["validation"]
  at = {(r["model"], r["multiplier"]): r["ppl"] for r in rows if r["haystack"] == "validation"}
  assert t["drt_vs_full_attention_1x_pct"] == pytest.approx(
      100 * (at["drt", 1] / at["full_attention", 1] - 1), abs=0.01)
  assert t["drt_2x_vs_1x_pct"] == pytest.approx(100 * (at["drt", 2] / at["drt", 1] - 1), abs=0.01)
  assert t["drt_1x_le_sliding_window"] == (at["drt", 1] <= at["sliding_window", 1])
  assert t["drt_without_retrieval_1x_pct"] == pytest.approx(
      100 * (at[lm_stage.ABLATED, 1] / at["drt", 1] - 1), abs=0.01)
  assert md.count(f"| {lm_stage.ABLATED} | {out['lm_models']['drt']['parameters']:,} |") == 2
  with pytest.raises(ValueError, match="unknown"):
    lm_stage.run_stage(str(tmp_path / "rep"), sets, cache, heldout=heldout_texts(tmp_path / "manuals"),
                       multipliers=[1], long_multipliers=[], windows=1, models=("drt", "swa"))
