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


def _np_fmix(x):
  x = x ^ (x >> np.uint32(16))
  x = x * np.uint32(0x85EBCA6B)
  x = x ^ (x >> np.uint32(13))
  x = x * np.uint32(0xC2B2AE35)
  return x ^ (x >> np.uint32(16))


def _np_gumbel(seed, b, n, m):
  """The documented counter hash in numpy uint32 arithmetic, Gumbel in float64: [b, n, m]."""
  with np.errstate(over="ignore"):
    bi, ci, ei = (np.arange(s, dtype=np.uint32) for s in (b, n, m))
    row = _np_fmix(bi[:, None, None] * np.uint32(0x9E3779B9) ^ seed[0])
    row = _np_fmix(row ^ (ci[None, :, None] * np.uint32(0x7FEB352D) + seed[1]))
    bits = _np_fmix(row ^ (ei[None, None, :] * np.uint32(0x846CA68B)))
  u = ((bits >> np.uint32(8)).astype(np.float64) + 0.5) * 2.0 ** -24
  return -np.log(-np.log(u))


@pytest.mark.parametrize("block", [0, 3, 4, 16])
def test_noisy_picks_match_numpy_for_every_blocking(block):
  """Training picks (Gumbel noise on) equal the numpy top-k of score + noise over e < c, with
  the noise of each (row, c, e) from the counter hash: dense, blocks that do not divide the 11
  chunks, and a block larger than the sequence all pick the same chunks."""
  from gca_jax.model.retrieval import noise_seed
  q, keys = _qk(3, b=2, n=11, d=8)
  key = jax.random.PRNGKey(7)
  noisy = _np_scores(q, keys) + _np_gumbel(np.asarray(noise_seed(key)), 2, 11, 11)
  idx, w, valid = map(np.asarray, select_chunks(jnp.asarray(q), jnp.asarray(keys), 4, block=block, noise_key=key))
  for b in range(2):
    for c in range(11):
      want = np.argsort(-noisy[b, c, :c])[:4]
      assert sorted(idx[b, c][valid[b, c]].tolist()) == sorted(want.tolist()), (b, c)


def test_gumbel_noise_is_standard_gumbel():
  """Moments of the hashed noise: mean = Euler's gamma, variance = pi^2 / 6, and distinct
  seeds / rows / keys decorrelated."""
  from gca_jax.model.retrieval import gumbel_noise, noise_seed
  seed = noise_seed(jax.random.PRNGKey(0))
  g = np.asarray(gumbel_noise(seed, jnp.arange(4)[:, None, None], jnp.arange(256)[None, :, None],
                              jnp.arange(256)[None, None, :]), np.float64)
  assert abs(g.mean() - 0.5772156649) < 0.01 and abs(g.var() - np.pi ** 2 / 6) < 0.03
  assert abs(np.corrcoef(g[0].ravel(), g[1].ravel())[0, 1]) < 0.01
  assert abs(np.corrcoef(g[0, :-1].ravel(), g[0, 1:].ravel())[0, 1]) < 0.01
  other = np.asarray(gumbel_noise(noise_seed(jax.random.PRNGKey(1)), 0, jnp.arange(256)[:, None],
                                  jnp.arange(256)[None, :]))
  assert abs(np.corrcoef(g[0].ravel(), other.ravel())[0, 1]) < 0.01


def _all_shapes(jaxpr):
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      yield tuple(getattr(v.aval, "shape", ()))
    for val in eqn.params.values():
      for sub in val if isinstance(val, (tuple, list)) else (val,):
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, "eqns"):
          yield from _all_shapes(sub)


def test_blocked_scoring_never_builds_the_full_score_matrix():
  """With a block, no intermediate of the picks holds n x M scores: memory O(n * block)."""
  from gca_jax.model.retrieval import top_chunks
  n, block = 64, 8
  q = jnp.ones((1, n, 8))
  jaxpr = jax.make_jaxpr(lambda q, k: top_chunks(q, k, 3, block=block, noise_key=jax.random.PRNGKey(0)))(q, q)
  biggest = max(int(np.prod(s)) for s in _all_shapes(jaxpr.jaxpr))
  assert biggest <= n * 8 * 2, biggest  # q and keys themselves; the score blocks are block x block
  dense = jax.make_jaxpr(lambda q, k: top_chunks(q, k, 3, noise_key=jax.random.PRNGKey(0)))(q, q)
  assert max(int(np.prod(s)) for s in _all_shapes(dense.jaxpr)) >= n * n  # the check can fail


def test_model_training_picks_do_not_depend_on_the_retrieval_block():
  """DRT with Gumbel noise in training: dense and blocked retrieval give the same picks and
  weights for the same key (blocking is an execution setting, not a change of model)."""
  from gca_jax.config import ExecutionConfig
  toks = jax.random.randint(jax.random.PRNGKey(4), (2, 13 * 4), 1, 60)
  outs = []
  for block in (0, 3):
    model = DRT(TINY, rngs=nnx.Rngs(0), execution=ExecutionConfig(retrieval_block=block))
    outs.append(model.forward(toks, train=True, rngs=jax.random.PRNGKey(5))["retrieval"])
  for (i0, w0), (i1, w1) in zip(*outs):
    np.testing.assert_array_equal(np.sort(np.asarray(i0), -1), np.sort(np.asarray(i1), -1))
    np.testing.assert_allclose(np.sort(np.asarray(w0), -1), np.sort(np.asarray(w1), -1), rtol=1e-6)
