"""The train step's objective: blocked fused cross-entropy vs float64 numpy (value and
gradients), and gradient accumulation that keeps the full-batch weighted mean."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gca_jax.config import ExecutionConfig, ModelConfig, OptimConfig
from gca_jax.model import build_model
from gca_jax.model.chunking import IGNORE
from gca_jax.train import step as step_mod
from gca_jax.train.cross_entropy import blocked_cross_entropy
from gca_jax.train.optim import make_optimizer
from gca_jax.train.state import init_state

TINY = ModelConfig(vocab_size=64, d_model=16, num_heads=2, num_kv_heads=2, mlp_dim=32, lower_layers=1,
                   upper_layers=(1,), encoder_layers=1, chunk_size=4, top_k=2, window=10)


def _np_ce(h, table, targets, w):
  """Weighted NLL sum, per-token NLL and the gradients of the sum, in float64."""
  logits = h.astype(np.float64) @ table.astype(np.float64).T
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  nll = -np.log(np.take_along_axis(p, targets[..., None], -1)[..., 0])
  d = p.copy()
  np.put_along_axis(d, targets[..., None], np.take_along_axis(d, targets[..., None], -1) - 1, -1)
  d *= w[..., None]
  return (w * nll).sum(), nll, d @ table, np.einsum("btv,btd->vd", d, h), nll


def _ce_inputs(seed: int):
  """Hidden states [2, 10, 8], a 50-row table, targets and uneven weights."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(2, 10, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32),
          rng.integers(0, 50, size=(2, 10)).astype(np.int32), rng.uniform(0, 3, size=(2, 10)).astype(np.float32))


@pytest.mark.parametrize("block", [0, 3, 7, 64])
def test_blocked_cross_entropy_matches_numpy(block):
  """Value, per-token NLL and gradients (h, table, weights) equal float64 numpy for one block,
  blocks that do not divide the 10 positions, and a block longer than the sequence."""
  h, table, targets, w = _ce_inputs(0)
  want_sum, want_nll, want_dh, want_dtab, want_dw = _np_ce(h, table, targets, w)

  def f(h, table, w):
    return blocked_cross_entropy(h, table, jnp.asarray(targets), w, block=block)

  total, nll = jax.jit(f)(h, table, w)
  np.testing.assert_allclose(total, want_sum, rtol=1e-5)
  np.testing.assert_allclose(nll, want_nll, rtol=1e-5, atol=1e-6)
  grads = jax.jit(jax.grad(lambda *a: 2.0 * f(*a)[0], argnums=(0, 1, 2)))(h, table, w)
  for got, want in zip(grads, (want_dh, want_dtab, want_dw)):
    np.testing.assert_allclose(got, 2.0 * want, rtol=1e-4, atol=1e-5)


def test_blocked_cross_entropy_refuses_mismatched_shapes():
  with pytest.raises(ValueError, match="targets"):
    blocked_cross_entropy(jnp.ones((2, 5, 4)), jnp.ones((9, 4)), jnp.ones((2, 4), jnp.int32), jnp.ones((2, 5)))


def _setup(cfg=TINY, ce_block=5, seed=0):
  model = build_model(cfg, rngs=nnx.Rngs(seed), execution=ExecutionConfig(ce_block=ce_block))
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, clip_norm=0.0), 10)
  graphdef, state = init_state(model, tx, seed)
  return model, graphdef, tx, state


def _batch(b=8, t=23):
  """Uneven masks: rows with few or many ignored labels and answer spans of different lengths."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, 60, size=(b, t)).astype(np.int32)
  labels = tokens.copy()
  answer = np.zeros((b, t), np.int32)
  for r in range(b):
    if r % 3:
      labels[r, : rng.integers(1, t - 4)] = IGNORE
    if r % 2:
      answer[r, t - 1 - r:] = 1
  return {"tokens": jnp.asarray(tokens), "labels": jnp.asarray(labels), "answer_mask": jnp.asarray(answer)}


def test_loss_is_the_weighted_mean_of_float64_cross_entropy():
  """loss_fn with a blocked head equals the numpy weighted CE of the model's plain logits."""
  model, graphdef, _, state = _setup(ce_block=4)
  batch = _batch()
  loss, aux = step_mod.loss_fn(state.params, graphdef, batch, None, train=False, answer_loss_weight=3.0)
  logits = np.asarray(model(batch["tokens"]), np.float64)[:, :-1]
  targets = np.asarray(batch["tokens"])[:, 1:]
  top = logits.max(-1, keepdims=True)
  logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  lm = (np.asarray(batch["labels"])[:, 1:] != IGNORE).astype(np.float64)
  w = lm + 3.0 * np.asarray(batch["answer_mask"])[:, 1:]
  np.testing.assert_allclose(loss, (nll * w).sum() / w.sum(), rtol=1e-5)
  np.testing.assert_allclose(aux["nll_sum"], (nll * lm).sum(), rtol=1e-5)
  assert aux["tokens"] == lm.sum()


def test_grad_accum_keeps_the_objective_with_uneven_masks():
  """grad_accum 1 and 4 give the same loss and the same update, although the per-micro-batch
  weighted means would not average to the full-batch mean (checked: the test can fail)."""
  model = build_model(dataclasses.replace(TINY, gumbel=False, init_std=0.5), rngs=nnx.Rngs(0),
                      execution=ExecutionConfig(ce_block=5))
  tx = optax.sgd(1.0)  # the update is the gradient itself (Adam's first step would hide its scale)
  graphdef, state = init_state(model, tx, 0)
  batch = _batch()
  kw = dict(answer_loss_weight=5.0)
  new1, m1 = jax.jit(step_mod.make_train_step(graphdef, tx, grad_accum=1, **kw))(state, batch)
  new4, m4 = jax.jit(step_mod.make_train_step(graphdef, tx, grad_accum=4, **kw))(state, batch)
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-4)
  assert m4["tokens"] == m1["tokens"]
  for a, b in zip(jax.tree_util.tree_leaves(new1.params), jax.tree_util.tree_leaves(new4.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  micro = [step_mod.loss_fn(state.params, graphdef, jax.tree_util.tree_map(lambda x: x[2 * i: 2 * i + 2], batch),
                            None, train=False, **kw)[0] for i in range(4)]
  assert abs(float(np.mean(micro)) - float(m1["loss"])) > 1e-2


def test_grad_accum_traces_the_model_once(monkeypatch):
  """The accumulator zeros come from the parameters, not from an extra trace of the step."""
  calls = []
  real = step_mod.loss_fn
  monkeypatch.setattr(step_mod, "loss_fn", lambda *a, **k: calls.append(1) or real(*a, **k))
  _, graphdef, tx, state = _setup()
  jax.eval_shape(step_mod.make_train_step(graphdef, tx, grad_accum=4), state, _batch())
  assert len(calls) == 1


@pytest.mark.parametrize("ce_block", [4, 0])
def test_gradient_never_holds_whole_logits(ce_block):
  """With a cross-entropy block, no array of the loss and its gradient spans more than one
  block of [positions, vocabulary]; with one block (0) the whole logits appear (the check can fail)."""
  cfg = dataclasses.replace(TINY, vocab_size=96)
  _, graphdef, _, state = _setup(cfg, ce_block=ce_block)
  batch = _batch(b=2, t=23)
  grad = jax.jit(jax.grad(lambda p: step_mod.loss_fn(p, graphdef, batch, jax.random.PRNGKey(0), train=True)[0]))
  hlo = grad.lower(state.params).as_text()  # every intermediate's type, e.g. tensor<2x4x96xf32>
  longest = max(int(t) for t in re.findall(r"tensor<\d+x(\d+)x96x", hlo))
  assert longest == (ce_block or 22)


def test_cpu_compiler_options_parse_and_keep_the_math():
  """execution.cpu_compiler_options: 'tuned' gives the YNN option on CPU only, 'default' none,
  a user's pairs pass through, a misspelling names the field; the gradients of the blocked
  cross-entropy compiled with the tuned options still equal float64 numpy."""
  tuned = ExecutionConfig().compiler_options("cpu")
  assert tuned == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"}
  assert ExecutionConfig().compiler_options("tpu") == {}
  assert ExecutionConfig(cpu_compiler_options="default").compiler_options("cpu") == {}
  assert ExecutionConfig(cpu_compiler_options="xla_cpu_use_xnnpack=false").compiler_options("cpu") == {
      "xla_cpu_use_xnnpack": "false"}
  with pytest.raises(ValueError, match="cpu_compiler_options"):
    ExecutionConfig(cpu_compiler_options="fast")
  h, table, targets, w = _ce_inputs(1)
  _, _, want_dh, want_dtab, _ = _np_ce(h, table, targets, w)
  grad = jax.jit(jax.grad(lambda h, t: blocked_cross_entropy(h, t, jnp.asarray(targets), w, block=3)[0],
                          argnums=(0, 1)), compiler_options=tuned)
  for got, want in zip(grad(h, table), (want_dh, want_dtab)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
