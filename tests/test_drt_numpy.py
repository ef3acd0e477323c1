"""The tiny DRT and its baselines vs an independent float64 numpy forward written from the
method (docs/method.md, Token layout and The forward pass), reading the weights from the NNX param state."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gca_jax.config import ModelConfig
from gca_jax.model import DRT, FullAttentionLM, FullAttentionRoPELM, SlidingWindowLM

BASE = ModelConfig(
    model_type="drt", vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=48,
    lower_layers=1, upper_layers=(1, 2), encoder_layers=1, chunk_size=5, top_k=3, window=12)


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def _randomize(model, seed: int) -> None:
  """Weights far from init: kernels N(0, 1/fan_in), embedding N(0, 1), norm scales U(0.5, 2)."""
  rng = np.random.default_rng(seed)

  def new(path, x):
    name = [getattr(p, "key", getattr(p, "name", None)) for p in path]
    if "scale" in name:
      v = rng.uniform(0.5, 2.0, x.shape)
    elif "table" in name:
      v = rng.normal(size=x.shape)
    else:
      v = rng.normal(size=x.shape) / np.sqrt(x.shape[0])
    return jnp.asarray(v, x.dtype)

  nnx.update(model, jax.tree_util.tree_map_with_path(new, nnx.state(model, nnx.Param)))


def _model(cls, cfg, seed: int):
  """A model with randomized weights (abstract init: every param is overwritten anyway)."""
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  assert not jax.tree_util.tree_leaves(nnx.state(model, nnx.Not(nnx.Param)))
  _randomize(model, seed)
  return model


_forward = nnx.jit(lambda model, tokens: model.forward(tokens))


def _weights(model) -> dict:
  """The param state as a nested dict of float64 arrays (list indices become int keys)."""
  out: dict = {}
  for path, x in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
    keys = [p.key if hasattr(p, "key") else p.idx for p in path if not hasattr(p, "name")]
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = np.asarray(x, np.float64)
  return out


# ----------------------------------------------------------------------------------------------
# float64 numpy reference
# ----------------------------------------------------------------------------------------------


def _seq(d: dict) -> list:
  """The layers of an nnx.List in index order."""
  return [v for _, v in sorted(d.items())]


def rms(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def swiglu(x, p):
  g = x @ p["gate"]["kernel"]
  return (g / (1.0 + np.exp(-g)) * (x @ p["up"]["kernel"])) @ p["down"]["kernel"]


def rope_np(x, theta):
  """Rotate-half RoPE over positions 0..P-1 of x [N, P, H, d]."""
  p, d = x.shape[1], x.shape[-1]
  inv = theta ** (-2.0 * np.arange(d // 2) / d)
  ang = np.arange(p)[:, None] * inv[None]  # P, d/2
  cos = np.cos(np.concatenate([ang, ang], -1))[None, :, None]
  sin = np.sin(np.concatenate([ang, ang], -1))[None, :, None]
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  return x * cos + np.concatenate([-x2, x1], -1) * sin


def mha(x, p, cfg, mask, *, alibi, theta=None):
  """Dense masked GQA attention over x [N, L, D]; ALiBi logit q.k/sqrt(d) - slope_h (i - j)."""
  n, length, _ = x.shape
  nh, kh = cfg.num_heads, cfg.num_kv_heads
  d = cfg.d_model // nh
  q = (x @ p["q"]["kernel"]).reshape(n, length, nh, d)
  k = (x @ p["k"]["kernel"]).reshape(n, length, kh, d)
  v = (x @ p["v"]["kernel"]).reshape(n, length, kh, d)
  if theta is not None:
    q, k = rope_np(q, theta), rope_np(k, theta)
  k, v = np.repeat(k, nh // kh, axis=2), np.repeat(v, nh // kh, axis=2)  # head h -> kv h // G
  s = np.einsum("nihd,njhd->nhij", q, k) / np.sqrt(d)
  if alibi:
    slopes = 2.0 ** (-8.0 * (np.arange(nh) + 1) / nh)
    pos = np.arange(length)
    s = s - slopes[:, None, None] * (pos[:, None] - pos[None, :])
  s = np.where(mask, s, -np.inf)
  e = np.exp(s - s.max(-1, keepdims=True))
  o = np.einsum("nhij,njhd->nihd", e / e.sum(-1, keepdims=True), v)
  return o.reshape(n, length, nh * d) @ p["o"]["kernel"]


def causal_mask(length, window=None):
  dist = np.arange(length)[:, None] - np.arange(length)[None, :]
  return (dist >= 0) if window is None else (dist >= 0) & (dist <= window)


def decoder_layer(h, p, cfg, mask, eps, *, alibi=True, theta=None):
  h = h + mha(rms(h, p["attn_norm"]["scale"], eps), p["attn"], cfg, mask, alibi=alibi, theta=theta)
  return h + swiglu(rms(h, p["mlp_norm"]["scale"], eps), p["mlp"])


def np_retrieval(q_lmk, keys, top_k):
  """Per (b, c): the valid picks e < c (top-min(c, K) by score / sqrt(D)) and their softmax."""
  b_, c_, d = q_lmk.shape
  scores = np.einsum("bcd,bed->bce", q_lmk, keys) / np.sqrt(d)
  picks = []
  for b in range(b_):
    rows = []
    for c in range(c_):
      order = np.argsort(-scores[b, c, :c], kind="stable")[: min(c, top_k)]
      sel = scores[b, c, order]
      w = np.exp(sel - sel.max()) if c else sel
      rows.append((order, w / w.sum() if c else w, scores[b, c, :c]))
    picks.append(rows)
  return picks


def np_gca(h1, p, cfg, picks, k_mem, v_mem):
  """GCA: own pre-norm, q from all P positions, chunk j served by the picks of landmark
  j - 1, per-chunk softmax over the S real keys (+1 with softmax_one), weights shared by heads."""
  b_, n, dm = h1.shape
  pp, nh, kh = cfg.chunk_positions, cfg.num_heads, cfg.num_kv_heads
  d, c_ = dm // nh, n // pp
  q = (rms(h1, p["norm"]["scale"], cfg.norm_eps) @ p["q"]["kernel"]).reshape(b_, c_, pp, nh, d)
  out = np.zeros_like(q)
  for b in range(b_):
    for j in range(1, c_):
      order, w, _ = picks[b][j - 1]
      for e, wi in zip(order, w):
        k = np.repeat(k_mem[b, e], nh // kh, axis=1)  # S, H, d
        v = np.repeat(v_mem[b, e], nh // kh, axis=1)
        s = np.einsum("qhd,shd->hqs", q[b, j], k) / np.sqrt(d)
        ex = np.exp(s)
        den = ex.sum(-1, keepdims=True) + (1.0 if cfg.softmax_one else 0.0)
        out[b, j] += wi * np.einsum("hqs,shd->qhd", ex / den, v)
  return out.reshape(b_, n, nh * d) @ p["o"]["kernel"]


def np_drt(tokens, wts, cfg):
  """Float64 DRT forward: logits at the raw positions and each group's picks per landmark."""
  tokens = np.where(np.asarray(tokens) < 0, cfg.pad_id, tokens)  # negative ids -> pad
  b_, t = tokens.shape
  s_, pp, dm = cfg.chunk_size, cfg.chunk_positions, cfg.d_model
  c_ = -(-t // s_)
  kh, d = cfg.num_kv_heads, dm // cfg.num_heads
  ids = np.full((b_, c_ * s_), cfg.pad_id)
  ids[:, :t] = tokens
  ids = np.concatenate([ids.reshape(b_, c_, s_), np.full((b_, c_, 1), cfg.lmk_id)], 2)
  ids = ids.reshape(b_, c_ * pp)
  assert np.all(ids[:, s_::pp] == cfg.lmk_id)
  table = wts["embed"]["table"]
  h = table[ids]
  win = causal_mask(c_ * pp, cfg.window)
  for p in _seq(wts.get("lower", {})):
    h = decoder_layer(h, p, cfg, win, cfg.norm_eps)
  # chunk encoder: bidirectional, RoPE over 0..P-1, no ALiBi
  x = rms(h.reshape(b_ * c_, pp, dm), wts["enc_prenorm"]["scale"], cfg.norm_eps)
  for p in _seq(wts.get("encoder", {})):
    x = decoder_layer(x, p, cfg, np.ones((pp, pp), bool), cfg.encoder_norm_eps, alibi=False,
                      theta=cfg.rope_theta)
  enc = rms(x, wts["enc_norm"]["scale"], cfg.encoder_norm_eps).reshape(b_, c_, pp, dm)
  lmk = enc[:, :, s_]
  k_mem = (enc[:, :, :s_] @ wts["memory"]["k"]["kernel"]).reshape(b_, c_, s_, kh, d)
  v_mem = (enc[:, :, :s_] @ wts["memory"]["v"]["kernel"]).reshape(b_, c_, s_, kh, d)
  all_picks = []
  for g in range(len(cfg.upper_layers)):
    q_lmk = rms(h.reshape(b_, c_, pp, dm)[:, :, s_], wts["lmk_norms"][g]["scale"], cfg.norm_eps)
    picks = np_retrieval(q_lmk, lmk, cfg.top_k)
    all_picks.append(picks)
    for p in _seq(wts["groups"][g]):
      h1 = h + mha(rms(h, p["attn_norm"]["scale"], cfg.norm_eps), p["attn"], cfg, win, alibi=True)
      mixed = h1 + np_gca(h1, p["gca"], cfg, picks, k_mem, v_mem)
      h = (h1 if cfg.bypass_residual else mixed) + swiglu(
          rms(mixed, p["mlp_norm"]["scale"], cfg.norm_eps), p["mlp"])
  h = h.reshape(b_, c_, pp, dm)[:, :, :s_].reshape(b_, c_ * s_, dm)[:, :t]
  return rms(h, wts["final_norm"]["scale"], cfg.norm_eps) @ table.T, all_picks


def np_decoder_lm(tokens, wts, cfg, window, *, rope=False):
  """Float64 baseline: no landmarks; causal (windowed or full) ALiBi attention, or with
  ``rope`` full causal attention with RoPE at absolute positions 0..L-1 and no ALiBi."""
  h = wts["embed"]["table"][np.asarray(tokens)]
  mask = causal_mask(h.shape[1], window)
  theta = cfg.rope_theta if rope else None
  for p in _seq(wts["layers"]):
    h = decoder_layer(h, p, cfg, mask, cfg.norm_eps, alibi=not rope, theta=theta)
  return rms(h, wts["final_norm"]["scale"], cfg.norm_eps) @ wts["embed"]["table"].T


# ----------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------


def _close(actual, expected, tol, what):
  a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
  np.testing.assert_allclose(a, e, rtol=tol, atol=tol * np.abs(e).max(), err_msg=what)


def _tokens(seed, b, t, cfg):
  """Random raw tokens, never the landmark id (pad ids allowed)."""
  return np.random.default_rng(seed).integers(0, cfg.lmk_id, size=(b, t)).astype(np.int32)


def _check_picks(model_ret, ref_picks, cfg, c_):
  """Valid picks (idx < c) equal the reference set-wise with equal weights; the rest weigh 0."""
  assert len(model_ret) == len(cfg.upper_layers)
  k = min(cfg.top_k, c_)
  for g, ((idx, w), ref) in enumerate(zip(model_ret, ref_picks)):
    idx, w = np.asarray(idx), np.asarray(w)
    assert idx.shape == w.shape == (len(ref), c_, k), (idx.shape, w.shape)
    for b, rows in enumerate(ref):
      for c, (order, wr, scores) in enumerate(rows):
        valid = idx[b, c] < c
        where = f"group {g} batch {b} landmark {c}"
        assert valid.sum() == min(c, k), f"{where}: {idx[b, c]} has {valid.sum()} valid picks"
        np.testing.assert_array_equal(w[b, c, ~valid], 0.0, err_msg=where)
        if c == 0:
          continue
        # guard against near-ties that float32 may order differently than float64
        srt = np.sort(scores)[::-1]
        if len(srt) > k:
          assert srt[k - 1] - srt[k] > 1e-4, f"{where}: near-tie in the reference scores"
        got = dict(zip(idx[b, c, valid].tolist(), w[b, c, valid].tolist()))
        want = dict(zip(order.tolist(), wr.tolist()))
        assert set(got) == set(want), f"{where}: picks {sorted(got)} != {sorted(want)}"
        np.testing.assert_allclose([got[e] for e in order], wr, rtol=1e-4, atol=1e-6, err_msg=where)


@pytest.mark.parametrize("changes,b,t", [
    (dict(), 2, 37),  # 8 chunks, T % S != 0, both groups retrieve
    # 7 chunks; large, distinct epsilons so that using the wrong one shows
    (dict(softmax_one=False, bypass_residual=False, norm_eps=0.3, encoder_norm_eps=0.03), 2, 33),
    (dict(top_k=5, upper_layers=(1,)), 1, 18),  # C=4 < top_k
    (dict(), 1, 4),  # a single (padded) chunk: no retrieval at all
])
def test_drt_matches_numpy(changes, b, t):
  """DRT logits and picks equal the float64 numpy forward."""
  cfg = dataclasses.replace(BASE, **changes)
  model = _model(DRT, cfg, seed=t)
  wts = _weights(model)
  tokens = _tokens(t, b, t, cfg)
  tokens[0, 1] = cfg.pad_id  # an in-sequence pad id is an ordinary token
  tokens[-1, -1] = -100  # negative ids (collator padding) read as pad_id
  out = _forward(model, jnp.asarray(tokens))
  ref_logits, ref_picks = np_drt(tokens, wts, cfg)
  assert out["logits"].dtype == jnp.float32 and out["logits"].shape == (b, t, cfg.vocab_size)
  c_ = -(-t // cfg.chunk_size)
  _check_picks(out["retrieval"], ref_picks, cfg, c_)
  _close(out["logits"], ref_logits, 1e-4, "logits")


def _zero_gca(wts: dict) -> None:
  """Zeroes every GCA output projection of the numpy weights (the reference without GCA)."""
  for g in wts["groups"].values():
    for p in g.values():
      p["gca"]["o"]["kernel"] = np.zeros_like(p["gca"]["o"]["kernel"])


def test_gca_actually_matters():
  """Sanity of the reference: dropping the GCA changes the logits (so the test above sees it)."""
  cfg = BASE
  wts = _weights(_model(DRT, cfg, seed=1))
  tokens = _tokens(5, 1, 37, cfg)
  ref, picks = np_drt(tokens, wts, cfg)
  _zero_gca(wts)
  no_gca, _ = np_drt(tokens, wts, cfg)
  s_ = cfg.chunk_size
  # chunks 0 and 1 get no GCA; every later chunk does
  np.testing.assert_allclose(no_gca[:, : 2 * s_], ref[:, : 2 * s_], rtol=1e-12, atol=1e-12)
  assert np.abs(no_gca[:, 2 * s_:] - ref[:, 2 * s_:]).max() > 1e-2
  assert all(len(picks[0][0][c][0]) == min(c, cfg.top_k) for c in range(8))


def test_without_retrieval_is_the_reference_without_gca():
  """The retrieval ablation equals the numpy DRT with every GCA output projection zeroed, and
  leaves the model it copies untouched."""
  from gca_jax.model import without_retrieval
  cfg = BASE
  model = _model(DRT, cfg, seed=2)
  wts = _weights(model)
  tokens = _tokens(6, 2, 41, cfg)
  ref, _ = np_drt(tokens, wts, cfg)
  _zero_gca(wts)
  ref_off, _ = np_drt(tokens, wts, cfg)
  _close(_forward(without_retrieval(model), jnp.asarray(tokens))["logits"], ref_off, 1e-4, "ablated")
  _close(_forward(model, jnp.asarray(tokens))["logits"], ref, 1e-4, "original after the copy")
  with pytest.raises(ValueError, match="needs a DRT"):
    without_retrieval(_model(SlidingWindowLM, dataclasses.replace(cfg, model_type="sliding_window"), 0))


@pytest.mark.parametrize("cls,window", [(SlidingWindowLM, 6), (FullAttentionLM, None)])
def test_baselines_match_numpy(cls, window):
  """Sliding-window and full-attention baselines equal the numpy decoder with their mask."""
  cfg = dataclasses.replace(BASE, model_type="sliding_window" if window else "full_attention",
                window=window or BASE.window)
  model = _model(cls, cfg, seed=3)
  tokens = _tokens(4, 2, 23, cfg)
  ref = np_decoder_lm(tokens, _weights(model), cfg, window)
  got = _forward(model, jnp.asarray(tokens))["logits"]
  assert got.dtype == jnp.float32 and got.shape == (2, 23, cfg.vocab_size)
  _close(got, ref, 1e-4, cls.__name__)


def test_full_attention_rope_matches_numpy():
  """The RoPE full-attention baseline equals the numpy decoder with RoPE at absolute positions
  and no ALiBi, and differs from the ALiBi decoder with the same weights."""
  cfg = dataclasses.replace(BASE, model_type="full_attention_rope", rope_theta=50.0)
  model = _model(FullAttentionRoPELM, cfg, seed=5)
  tokens = _tokens(6, 2, 29, cfg)
  wts = _weights(model)
  ref = np_decoder_lm(tokens, wts, cfg, None, rope=True)
  got = _forward(model, jnp.asarray(tokens))["logits"]
  _close(got, ref, 1e-4, "FullAttentionRoPELM")
  alibi = np_decoder_lm(tokens, wts, cfg, None)
  assert np.abs(ref - alibi).max() > 1e-2 * np.abs(ref).max()

