"""Blocked attention vs dense masked float64 numpy references."""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from gca_jax.model.attention import (chunk_bidirectional_attention, full_causal_attention,
                                     sliding_window_attention)


def dense_reference(q, k, v, *, window=None, alibi=True, causal=True):
  """O(L^2) float64 attention with an explicit mask: keys i-window..i (or all j <= i)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, length, h, d = q.shape
  kh = k.shape[2]
  g = h // kh
  out = np.zeros_like(q)
  i = np.arange(length)[:, None]
  j = np.arange(length)[None, :]
  allowed = np.ones((length, length), bool)
  if causal:
    allowed &= j <= i
  if window is not None:
    allowed &= i - j <= window
  for head in range(h):
    slope = 2.0 ** (-8.0 * (head + 1) / h)
    s = np.einsum("bid,bjd->bij", q[:, :, head], k[:, :, head // g]) / np.sqrt(d)
    if alibi:
      s = s - slope * (i - j)
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out[:, :, head] = np.einsum("bij,bjd->bid", p, v[:, :, head // g])
  return out


def _qkv(seed, b, length, h, kh, d):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(ks[0], (b, length, h, d)), jax.random.normal(ks[1], (b, length, kh, d)),
          jax.random.normal(ks[2], (b, length, kh, d)))


@pytest.mark.parametrize("length,window,block,h,kh", [
    (37, 8, 0, 2, 2),     # T not a multiple of the block, automatic block
    (100, 31, 16, 4, 2),  # several window blocks (nb = 2), GQA
    (50, 7, 8, 2, 1),     # window < block
    (20, 64, 8, 2, 2),    # window longer than the sequence
    (1, 5, 0, 2, 2),      # a single position
])
def test_sliding_window_matches_dense_mask(length, window, block, h, kh):
  q, k, v = _qkv(length + window, 2, length, h, kh, 16)
  slopes = np.array([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], np.float32)
  got = sliding_window_attention(q, k, v, window=window, slopes=slopes, block=block)
  want = dense_reference(q, k, v, window=window)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_sliding_window_without_alibi():
  q, k, v = _qkv(3, 1, 45, 2, 2, 8)
  got = sliding_window_attention(q, k, v, window=10, slopes=None, block=16)
  np.testing.assert_allclose(np.asarray(got), dense_reference(q, k, v, window=10, alibi=False), atol=2e-5)


def test_sliding_window_gradients_match_dense():
  q, k, v = _qkv(7, 1, 29, 2, 1, 8)
  slopes = np.array([0.25, 0.0625], np.float32)
  ct = jax.random.normal(jax.random.PRNGKey(9), q.shape)

  def dense_jnp(q, k, v):  # same math as the float64 reference, differentiable
    length = q.shape[1]
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    kk = jnp.repeat(k, 2, axis=2)
    vv = jnp.repeat(v, 2, axis=2)
    s = jnp.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(q.shape[-1])
    s = s - slopes[:, None, None] * (i - j)
    s = jnp.where((j <= i) & (i - j <= 6), s, -jnp.inf)
    return jnp.einsum("bhij,bjhd->bihd", jax.nn.softmax(s, -1), vv)

  blocked = lambda q, k, v: sliding_window_attention(q, k, v, window=6, slopes=slopes, block=8)
  g1 = jax.vjp(blocked, q, k, v)[1](ct)
  g2 = jax.vjp(dense_jnp, q, k, v)[1](ct)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@pytest.mark.parametrize("length,block", [(33, 8), (64, 16), (5, 256)])
def test_full_causal_matches_dense(length, block):
  q, k, v = _qkv(length, 2, length, 4, 2, 8)
  slopes = np.array([2.0 ** (-8.0 * (i + 1) / 4) for i in range(4)], np.float32)
  got = full_causal_attention(q, k, v, slopes=slopes, block=block)
  np.testing.assert_allclose(np.asarray(got), dense_reference(q, k, v), atol=2e-5)


def test_sliding_window_memory_is_linear_in_length():
  """The blocked kernel's largest intermediate grows linearly with L (no L x L buffer)."""
  def biggest(length):
    q, k, v = (jax.ShapeDtypeStruct((1, length, 2, 8), jnp.float32) for _ in range(3))
    fn = lambda q, k, v: sliding_window_attention(q, k, v, window=32, slopes=None, block=16)
    jaxpr = jax.make_jaxpr(fn)(q, k, v)
    return max(int(np.prod(var.aval.shape)) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars)
  small, large = biggest(1024), biggest(4096)
  assert large <= 4 * small * 1.05, (small, large)
  assert large < 4096 * 4096 // 4


def test_chunk_attention_is_bidirectional_dense():
  q, k, v = _qkv(11, 3, 9, 2, 2, 8)
  got = chunk_bidirectional_attention(q, k, v)
  want = dense_reference(q, k, v, alibi=False, causal=False)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
