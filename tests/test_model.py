"""Model-level behaviour: causality, Gumbel only in training, reach beyond the window,
configuration errors and preset sizes."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.presets import MODEL_PRESETS
from gca_jax.config import ConfigError, ModelConfig
from gca_jax.model import DRT, FullAttentionLM, SlidingWindowLM, build_model, count_params
from gca_jax.model.layers import rope

BASE = dict(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=32, lower_layers=1,
            upper_layers=(1, 1), encoder_layers=1, chunk_size=4, top_k=3, window=10)


def _cfg(model_type="drt", **kw):
  return ModelConfig(model_type=model_type, **{**BASE, **kw})


@pytest.mark.parametrize("model_type", ["drt", "sliding_window", "full_attention"])
def test_causality(model_type):
  """Changing tokens at positions >= t never changes logits at positions < t."""
  model = build_model(_cfg(model_type), rngs=nnx.Rngs(0))
  fwd = jax.jit(lambda x: model(x))
  toks = jax.random.randint(jax.random.PRNGKey(0), (2, 45), 1, 62)
  base = np.asarray(fwd(toks))
  for t in (1, 4, 5, 13, 27, 44):
    other = toks.at[:, t:].set(jax.random.randint(jax.random.PRNGKey(t), (2, 45 - t), 1, 62))
    got = np.asarray(fwd(other))
    np.testing.assert_allclose(got[:, :t], base[:, :t], atol=1e-6, err_msg=f"t={t}")
    assert np.abs(got[:, t:] - base[:, t:]).max() > 1e-3  # the change is visible afterwards


def test_drt_retrieval_active_in_every_group():
  model = DRT(_cfg(), rngs=nnx.Rngs(0))
  out = model.forward(jax.random.randint(jax.random.PRNGKey(0), (1, 40), 1, 62))
  assert len(out["retrieval"]) == 2
  for idx, w in out["retrieval"]:
    assert idx.shape == (1, 10, 3)
    assert np.all(np.asarray(w)[:, 4:].sum(-1) > 0.99)


def test_drt_reaches_beyond_the_window_baseline_does_not():
  """A token far outside every layer's receptive field still moves DRT's later logits
  (through the retrieved chunk memory) but not the sliding-window baseline's."""
  length = 160  # 40 chunks; receptive field of 3 windowed layers is 30 positions
  toks = jax.random.randint(jax.random.PRNGKey(5), (1, length), 1, 62)
  other = toks.at[:, 2].set((toks[0, 2] + 7) % 60 + 1)
  drt = DRT(_cfg(), rngs=nnx.Rngs(1))
  swa = SlidingWindowLM(_cfg("sliding_window"), rngs=nnx.Rngs(1))
  tail = slice(120, None)
  fd, fs = jax.jit(lambda x: drt(x)), jax.jit(lambda x: swa(x))
  assert np.abs(np.asarray(fd(toks))[:, tail] - np.asarray(fd(other))[:, tail]).max() > 1e-5
  np.testing.assert_array_equal(np.asarray(fs(toks))[:, tail], np.asarray(fs(other))[:, tail])


def test_gumbel_noise_only_under_train():
  model = DRT(_cfg(top_k=2), rngs=nnx.Rngs(0))
  toks = jax.random.randint(jax.random.PRNGKey(0), (2, 64), 1, 62)
  fwd = jax.jit(lambda x, key, train: model.forward(x, train=train, rngs=key)["retrieval"], static_argnums=2)
  ev1, ev2 = model.forward(toks)["retrieval"], fwd(toks, jax.random.PRNGKey(3), False)
  for (i1, _), (i2, _) in zip(ev1, ev2):
    np.testing.assert_array_equal(np.asarray(i1), np.asarray(i2))
  picks = {tuple(np.asarray(fwd(toks, jax.random.PRNGKey(s), True)[0][0]).ravel()) for s in range(4)}
  assert len(picks) > 1  # noise changes the picks in training
  with pytest.raises(ValueError, match="rngs"):
    model(toks, train=True)
  quiet = DRT(_cfg(top_k=2, gumbel=False), rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(quiet(toks, train=True)), np.asarray(quiet(toks)))


def test_nnx_rngs_accepted_for_training():
  model = DRT(_cfg(), rngs=nnx.Rngs(0))
  out = model(jnp.ones((1, 20), jnp.int32), train=True, rngs=nnx.Rngs(gumbel=1))
  assert out.shape == (1, 20, 64) and out.dtype == jnp.float32


@pytest.mark.parametrize("length", [1, 3, 4, 5, 17])
def test_any_length_and_negative_ids(length):
  model = DRT(_cfg(), rngs=nnx.Rngs(0))
  toks = jnp.full((2, length), 3, jnp.int32).at[:, -1].set(-100)
  out = model(toks)
  assert out.shape == (2, length, 64) and np.all(np.isfinite(np.asarray(out)))


def test_bf16_compute():
  model = DRT(_cfg(dtype="bfloat16"), rngs=nnx.Rngs(0))
  ref = DRT(_cfg(), rngs=nnx.Rngs(0))
  toks = jax.random.randint(jax.random.PRNGKey(0), (1, 40), 1, 62)
  a, b = np.asarray(model(toks)), np.asarray(ref(toks))
  assert a.dtype == np.float32 and np.abs(a - b).max() < 0.1 * np.abs(b).max()


def test_rope_hand_formula():
  x = np.random.default_rng(0).normal(size=(1, 3, 1, 4)).astype(np.float32)
  got = np.asarray(rope(jnp.asarray(x), 10000.0))
  want = np.zeros_like(x, dtype=np.float64)
  for p in range(3):
    for i, f in enumerate([1.0, 0.01]):  # theta^(-2i/4) for i = 0, 1
      c, s = np.cos(p * f), np.sin(p * f)
      a, b = x[0, p, 0, i], x[0, p, 0, i + 2]
      want[0, p, 0, i], want[0, p, 0, i + 2] = a * c - b * s, b * c + a * s
  np.testing.assert_allclose(got, want, atol=1e-6)


def _param_count(cfg):
  return count_params(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))


def test_paper_parameter_counts():
  """The paper's 145.98M with tied embeddings (38.60M embedding + 107.38M other); the
  12-layer sliding-window base is 123.56M. The hand count below is layer by layer."""
  d, mlp, v = 768, 2048, 50265
  attn, ffn = 4 * d * d, 3 * d * mlp
  layer = attn + ffn + 2 * d
  upper = attn + 2 * d * d + ffn + 3 * d
  drt = v * d + 6 * layer + 6 * upper + 2 * layer + 2 * d + 2 * d * d + d + d
  assert drt == 145_980_672
  assert _param_count(MODEL_PRESETS["paper_drt_128m"]) == drt
  assert round(drt / 1e6, 2) == 145.98
  assert _param_count(MODEL_PRESETS["paper_base_12l"]) == v * d + 12 * layer + d == 123_557_376
  assert _param_count(MODEL_PRESETS["paper_drt_x2"]) == drt + d  # one more landmark norm


@pytest.mark.parametrize("field,value,match", [
    ("top_k", 0, "top_k"),
    ("d_model", 30, "divisible by num_heads"),
    ("num_kv_heads", 3, "multiple of num_kv_heads"),
    ("window", 8, "previous chunk"),
    ("model_type", "rnn", "model_type"),
    ("upper_layers", (0,), "upper_layers"),
    ("dtype", "float64x", "dtype"),
    ("pad_id", 63, "landmark"),
    ("vocab_size", 0, "vocab_size"),
])
def test_config_errors_name_field_and_fix(field, value, match):
  with pytest.raises(ConfigError, match=match) as err:
    _cfg(**{field: value})
  assert f"ModelConfig.{field}" in str(err.value) or field in str(err.value)


def test_window_rule_only_for_drt():
  assert _cfg("sliding_window", window=3).window == 3
  assert dataclasses.replace(_cfg(), window=9).window == 9  # 2 * 5 - 1 is the minimum
