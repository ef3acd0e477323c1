"""experiments/lm_positions: per-position NLL against a float64 log-softmax of the logits, and
the bucket table against a hand computation."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_drt_numpy import BASE, DRT, SlidingWindowLM, _model


@pytest.mark.parametrize("cls,model_type", [(DRT, "drt"), (SlidingWindowLM, "sliding_window")])
def test_token_nll_is_the_float64_next_token_nll(cls, model_type):
  from gca_jax.evals.perplexity import token_nll
  cfg = dataclasses.replace(BASE, model_type=model_type)
  model = _model(cls, cfg, seed=4)
  wins = np.random.default_rng(0).integers(3, cfg.vocab_size, (3, 23)).astype(np.int32)
  logits = np.asarray(model.forward(jnp.asarray(wins))["logits"], np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  want = np.stack([[-logp[b, p, wins[b, p + 1]] for p in range(22)] for b in range(3)])
  got = token_nll(model, wins)
  assert got.shape == (3, 22)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bucket_table_by_hand():
  from experiments.lm_positions import bucket_table
  # 2 windows of 5 tokens: 4 predicted tokens each (positions 1..4)
  a = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
  b = np.array([[2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0]])
  t = bucket_table({"a": a, "b": b}, "b", [1, 2, 5])
  assert t["a"]["buckets"] == [{"from": 1, "to": 2, "nll": 2.0, "minus_baseline": 0.0},
                               {"from": 2, "to": 5, "nll": 2.0, "minus_baseline": 0.0}]
  assert t["a"]["ppl"] == pytest.approx(np.exp(2.0), abs=1e-4)
  t = bucket_table({"a": a, "b": b}, "b", [1, 3, 4])  # positions 1-2, then 3 alone; 4 left out
  assert [r["nll"] for r in t["a"]["buckets"]] == [2.0, 2.0]
  assert [r["minus_baseline"] for r in t["b"]["buckets"]] == [0.0, 0.0]
  t = bucket_table({"a": a, "b": b * 0.5}, "b", [4, 5])
  assert t["a"]["buckets"] == [{"from": 4, "to": 5, "nll": 2.0, "minus_baseline": 1.0}]


def test_bad_runs_are_named(tmp_path):
  from experiments.lm_positions import _parse_runs, positions
  with pytest.raises(ValueError, match="not name=folder"):
    _parse_runs("drt=a,runs/b")
  with pytest.raises(ValueError, match="--baseline"):
    positions({"drt": str(tmp_path)}, "sw", "", [1, 32], 2, "")
  with pytest.raises(ValueError, match="experiment.json"):
    positions({"drt": str(tmp_path)}, "drt", "", [1, 32], 2, "")
