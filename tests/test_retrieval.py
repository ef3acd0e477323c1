"""Retrieval: causal chunk mask, picks and weights vs numpy (dense and blocked scoring), the
off-by-one shift, NaN safety."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gca_jax.config import ModelConfig
from gca_jax.model import DRT
from gca_jax.model.retrieval import causal_chunk_mask, select_chunks

TINY = ModelConfig(vocab_size=64, d_model=32, num_heads=2, num_kv_heads=2, mlp_dim=32, lower_layers=1,
                   upper_layers=(1, 1), encoder_layers=1, chunk_size=4, top_k=3, window=10)


def test_causal_chunk_mask_is_strict():
  m = causal_chunk_mask(4)
  assert m.tolist() == [[False] * 4, [True, False, False, False], [True, True, False, False],
                        [True, True, True, False]]


def _qk(seed, b=2, n=6, d=8):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, n, d)).astype(np.float32), rng.normal(size=(b, n, d)).astype(np.float32)


def _np_scores(q, keys):
  return np.einsum("bnd,bed->bne", q.astype(np.float64), keys.astype(np.float64)) / np.sqrt(q.shape[-1])


@pytest.mark.parametrize("block", [0, 2, 4])
def test_select_chunks_matches_numpy_softmax_over_valid_picks(block):
  """Dense (block 0) and blocked scoring, with a block that does not divide the 6 chunks, pick
  the numpy top-k of the strictly earlier chunks and weight them by their softmax."""
  q, keys = _qk(0)
  scores = _np_scores(q, keys)
  idx, w, valid = select_chunks(jnp.asarray(q), jnp.asarray(keys), 3, block=block)
  idx, w, valid = map(np.asarray, (idx, w, valid))
  for b in range(2):
    for c in range(6):
      past = scores[b, c, :c]
      order = np.argsort(-past)[:3]
      n = min(c, 3)
      assert sorted(idx[b, c][valid[b, c]].tolist()) == sorted(order.tolist())
      assert valid[b, c].sum() == n
      assert np.all(w[b, c][~valid[b, c]] == 0.0)
      if n:
        e = np.exp(past[order] - past[order].max())
        want = dict(zip(order.tolist(), e / e.sum()))
        for i, ok in zip(idx[b, c], valid[b, c]):
          if ok:
            np.testing.assert_allclose(w[b, c][list(idx[b, c]).index(i)], want[int(i)], rtol=1e-5)
      else:
        assert np.all(w[b, c] == 0.0)


def test_select_chunks_from_an_offset_sees_only_written_keys():
  """Serving: query chunks c0.. against a key store with room beyond them; picks stay < c."""
  q, keys = _qk(5, n=10)
  c0 = 6
  idx, w, valid = select_chunks(jnp.asarray(q[:, c0:]), jnp.asarray(keys), 2, c0=jnp.int32(c0), block=4)
  scores = _np_scores(q[:, c0:], keys)
  for b in range(2):
    for i in range(4):
      want = np.argsort(-scores[b, i, :c0 + i])[:2]
      assert sorted(np.asarray(idx)[b, i].tolist()) == sorted(want.tolist())
  assert np.asarray(valid).all()


def test_gumbel_changes_picks_not_weights_formula():
  """With noise the picks may change, but weights are still the softmax of noise-free scores."""
  q, keys = _qk(1, b=1, n=12)
  scores = _np_scores(q, keys)
  idx0, _, _ = select_chunks(jnp.asarray(q), jnp.asarray(keys), 2)
  changed = False
  for seed in range(8):
    idx, w, valid = select_chunks(jnp.asarray(q), jnp.asarray(keys), 2, noise_key=jax.random.PRNGKey(seed))
    changed |= bool(np.any(np.asarray(idx) != np.asarray(idx0)))
    assert np.all((np.asarray(idx) < np.arange(12)[None, :, None]) | ~np.asarray(valid))
    picked = np.take_along_axis(scores, np.asarray(idx), -1)
    v = np.asarray(valid)
    e = np.where(v, np.exp(picked - np.where(v, picked, -np.inf).max(-1, keepdims=True)), 0)
    den = e.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(w), np.divide(e, den, out=np.zeros_like(e), where=den > 0), rtol=1e-5, atol=1e-7)
  assert changed


def _model(cfg=TINY, seed=0):
  return DRT(cfg, rngs=nnx.Rngs(seed))


def test_shift_chunks_see_only_older_chunks():
  """Picks made at landmark c only point to chunks < c, so chunk c+1 reads chunks <= c-1."""
  model = _model()
  toks = jax.random.randint(jax.random.PRNGKey(0), (2, 7 * 4), 0, 60)
  for idx, w in model.forward(toks)["retrieval"]:
    idx, w = np.asarray(idx), np.asarray(w)
    c = np.arange(idx.shape[1])[None, :, None]
    assert np.all((idx < c) | (w == 0.0))
    assert np.all(w[:, 0] == 0.0)  # landmark 0 has nothing before it


def test_chunks_zero_and_one_get_no_gca():
  """Chunk 0 has no retrieval and chunk 1's only candidate row is empty: their GCA output is
  exactly zero whatever the memory holds, while later chunks read it."""
  model = _model()
  layer = model.groups[0][0]
  ks = jax.random.split(jax.random.PRNGKey(2), 3)
  h = jax.random.normal(ks[0], (1, 6 * 5, 32))
  _, k_mem, v_mem = model.encode_chunks(jax.random.normal(ks[1], (1, 6 * 5, 32)))
  idx, w = model.retrieve(0, h[:, 4::5], jax.random.normal(ks[2], (1, 6, 32)))
  out = np.asarray(layer.gca(h, k_mem, v_mem, idx[:, :-1], w[:, :-1]))
  assert np.all(out[:, :10] == 0.0)  # chunks 0 and 1 (5 positions each)
  assert np.all(np.abs(out[:, 10:]).max(-1) > 0)


@pytest.mark.parametrize("num_chunks", [1, 2, 3])
def test_no_nan_in_values_or_gradients_for_short_sequences(num_chunks):
  model = _model()
  graphdef, params = nnx.split(model, nnx.Param)
  toks = jax.random.randint(jax.random.PRNGKey(num_chunks), (2, num_chunks * 4), 1, 60)

  def loss(p, train):
    m = nnx.merge(graphdef, p)
    logits = m(toks, train=train, rngs=jax.random.PRNGKey(0))
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, toks[..., None], -1)[..., 0])

  step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  for train in (False, True):
    val, grads = step(params, train)
    assert np.isfinite(val)
    for leaf in jax.tree_util.tree_leaves(grads):
      assert np.all(np.isfinite(np.asarray(leaf)))


def test_retriever_gets_gradient_through_weights():
  """The landmark norms only influence the loss through the chunk weights: their gradient is
  nonzero once a chunk has >= 2 valid picks."""
  model = _model(dataclasses.replace(TINY, gumbel=False))
  graphdef, params = nnx.split(model, nnx.Param)
  toks = jax.random.randint(jax.random.PRNGKey(3), (2, 8 * 4), 1, 60)

  def loss(p):
    return jnp.sum(nnx.merge(graphdef, p)(toks) ** 2)

  g = jax.jit(jax.grad(loss))(params)
  assert float(jnp.abs(g["lmk_norms"][0]["scale"][...]).max()) > 0
