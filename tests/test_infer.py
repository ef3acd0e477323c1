"""Inference engine: segmented prefill, tail-exact mode and decoding equal the batch forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gca_jax.config import ModelConfig
from gca_jax.infer import Engine, generate
from gca_jax.model.chunking import raw_to_layout
from gca_jax.model import build_model

S, P = 7, 8


def _randomise_norms(model, seed: int) -> None:
  """All RMSNorm scales uniform in [0.3, 3] (far from 1, so a missing norm changes picks)."""
  state = nnx.state(model, nnx.Param)
  leaves, tree = jax.tree_util.tree_flatten_with_path(state)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  new = [jax.random.uniform(k, x.shape, x.dtype, 0.3, 3.0)
         if any(getattr(p, "key", None) == "scale" for p in path) else x
         for k, (path, x) in zip(keys, leaves)]
  nnx.update(model, jax.tree_util.tree_unflatten(tree, new))


@pytest.fixture(scope="module")
def drt():
  cfg = ModelConfig(upper_layers=(1, 1), chunk_size=S, window=2 * P, top_k=3)
  model = build_model(cfg, rngs=nnx.Rngs(0))
  _randomise_norms(model, 1)
  graphdef, params = nnx.split(model)
  fwd = jax.jit(lambda p, t: nnx.merge(graphdef, p).forward(t))
  return model, lambda t: jax.tree.map(np.asarray, fwd(params, jnp.asarray(t)))


T = S * 23 + 4  # 24 chunks, not a multiple of the segment sizes


@pytest.fixture(scope="module")
def data(drt):
  tok = _tokens(2, T)
  return tok, drt[1](tok)


@pytest.fixture(scope="module")
def shared(drt):
  """One engine (8-chunk segments, host-offloaded memory) for several tests: compiles once."""
  return Engine(drt[0], segment_chunks=8, offload=True, key_block=64)


def _tokens(b, t, seed=0, vocab=256):
  return np.random.default_rng(seed).integers(1, vocab - 1, (b, t)).astype(np.int32)


def _collect(eng, store):
  def cb(h, pos0, n):
    store[pos0] = np.asarray(eng.logits(h))[:, :n]
  return cb


def _raw_logits(store, t):
  lg = np.concatenate([store[k] for k in sorted(store)], 1)
  c = lg.shape[1] // P
  return lg.reshape(lg.shape[0], c, P, -1)[:, :, :S].reshape(lg.shape[0], c * S, -1)[:, :t]


@pytest.mark.parametrize("seg", [3, 8])
def test_segmented_prefill_equals_forward(drt, data, shared, seg):
  model, _ = drt
  tok, ref = data
  t = T
  eng = shared if seg == 8 else Engine(model, segment_chunks=seg, key_block=64)
  eng.traces.clear()
  state = eng.new_state(2, t)
  store = {}
  out = eng.prefill(state, tok, on_segment=_collect(eng, store), collect_picks=True)
  np.testing.assert_allclose(_raw_logits(store, t), ref["logits"], atol=1e-5, rtol=0)
  for (idx, w), (ridx, rw) in zip(out.picks, ref["retrieval"]):
    assert np.array_equal(np.where(rw > 0, idx, -1), np.where(rw > 0, ridx, -1))
    np.testing.assert_allclose(w, rw, atol=1e-5)
  assert out.segments == -(-24 // seg) and state.memory.count == 24
  assert all(v == 1 for v in eng.traces.values()), eng.traces  # one compilation per stage
  # bounded caches: window positions per layer, whatever the length
  assert state.cache_positions() == (model.cfg.lower_layers + 2) * model.cfg.window


def test_tail_exact_equals_forward_at_scored_positions(drt, data, shared):
  model, _ = drt
  tok, ref = data
  t = T
  first = t - 5  # score the last 5 tokens
  eng = shared
  state = eng.new_state(2, t)
  store = {}
  out = eng.prefill(state, tok, mode="tail", tail_from=int(raw_to_layout(first, S)),
                    on_segment=_collect(eng, store))
  (pos0, lg), = store.items()
  assert pos0 == out.tail_start and pos0 > 0  # the upper layers ran on the tail only
  assert lg.shape[1] < 8 * P
  raw = np.arange(first, t)
  got = lg[:, raw_to_layout(raw, S) - pos0]
  np.testing.assert_allclose(got, ref["logits"][:, first:], atol=1e-5, rtol=0)
  for (idx, w), (ridx, rw) in zip(state.picks, ref["retrieval"]):  # state at the end is exact
    np.testing.assert_array_equal(np.asarray(idx), ridx[:, -1])
    np.testing.assert_allclose(np.asarray(w), rw[:, -1], atol=1e-5)
  # the tail must start early enough: position tail_from minus the upper layers' reach
  assert pos0 <= raw_to_layout(first, S) - 2 * model.cfg.window


def test_decode_equals_forward_with_norms_far_from_one(drt, data, shared):
  model, _ = drt
  tok, ref = data
  t = T
  eng = shared
  state = eng.new_state(2, t)
  eng.prefill(state, tok[:, :S])  # one chunk by prefill, the rest token by token
  logits, picks = [], {}
  for j in range(S, t):
    c = state.memory.count
    logits.append(np.asarray(eng.step(state, tok[:, j])))
    if state.memory.count > c:
      picks[c] = [(np.asarray(i), np.asarray(w)) for i, w in state.picks]
    assert state.cache_positions() == 4 * model.cfg.window
  np.testing.assert_allclose(np.stack(logits, 1), ref["logits"][:, S:], atol=1e-5, rtol=0)
  assert sorted(picks) == list(range(1, 23))
  for c, per_group in picks.items():
    for (idx, w), (ridx, rw) in zip(per_group, ref["retrieval"]):
      valid = rw[:, c] > 0
      assert np.array_equal(np.where(valid, idx, -1), np.where(valid, ridx[:, c], -1)), (c, idx, ridx[:, c])
      np.testing.assert_allclose(w, rw[:, c], atol=1e-5)
  assert eng.traces["token"] == 1 and eng.traces["landmark"] == 1


def test_generate_greedy_and_sampling(drt, data, shared):
  model, fwd = drt
  prompt = data[0][:, :T - 9]
  eng = shared
  out = generate(model, prompt, 9, engine=eng)
  # greedy: each new token is the argmax of the batch forward over the generated sequence
  seq = np.concatenate([prompt, out], 1)
  want = np.argmax(fwd(seq)["logits"][:, prompt.shape[1] - 1:-1], -1)
  assert out.tolist() == want.tolist()
  out = out[:, :6]
  assert generate(model, prompt, 6, temperature=0.7, top_k=1, rng=jax.random.PRNGKey(0),
                  engine=eng).tolist() == out.tolist()
  a = generate(model, prompt, 6, temperature=1.0, rng=jax.random.PRNGKey(1), engine=eng)
  b = generate(model, prompt, 6, temperature=1.0, rng=jax.random.PRNGKey(1), engine=eng)
  assert a.tolist() == b.tolist()
  with pytest.raises(ValueError, match="rng"):
    generate(model, prompt, 2, temperature=1.0)


def test_sliding_window_baseline_segmented():
  cfg = ModelConfig(model_type="sliding_window", window=16)
  model = build_model(cfg, rngs=nnx.Rngs(2))
  tok = _tokens(1, 150, seed=9)
  graphdef, params = nnx.split(model)
  ref = np.asarray(jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, jnp.asarray(tok)))
  eng = Engine(model, segment_chunks=2)  # 32 positions per segment
  state = eng.new_state(1, 150)
  store = {}
  eng.prefill(state, tok[:, :100], on_segment=_collect(eng, store))
  lg = np.concatenate([store[k] for k in sorted(store)], 1)
  np.testing.assert_allclose(lg, ref[:, :100], atol=1e-5, rtol=0)
  steps = [np.asarray(eng.step(state, tok[:, j])) for j in range(100, 110)]
  np.testing.assert_allclose(np.stack(steps, 1), ref[:, 100:110], atol=1e-5, rtol=0)


def test_bad_inputs():
  cfg = ModelConfig(model_type="full_attention")
  with pytest.raises(ValueError, match="full-attention"):
    Engine(build_model(cfg, rngs=nnx.Rngs(0)))
