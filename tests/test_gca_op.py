"""``gca_attention`` vs an independent float64 numpy oracle (forward and hand-written (docs/method.md, GCA gradients)
backward), plus the op's shape validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gca import gca_attention


# ----------------------------------------------------------------------------------------------
# float64 numpy oracle, written from docs/method.md, GCA gradients (no code from pallas_kernels)
# ----------------------------------------------------------------------------------------------


def _chunk_probs(qh, kc, scale, softmax_one):
  """Per-chunk softmax of q.k*scale over S keys; softmax_one adds a zero logit. qh [Q,D], kc [S,D]."""
  s = qh @ kc.T * scale  # Q, S
  m = s.max(-1, keepdims=True)
  if softmax_one:
    m = np.maximum(m, 0.0)
  e = np.exp(s - m)
  den = e.sum(-1, keepdims=True) + (np.exp(-m) if softmax_one else 0.0)
  return e / den


def np_gca(q, k_mem, v_mem, idx, w, *, softmax_one, dout=None):
  """Forward (and, given ``dout``, the hand-derived gradients) of GCA in float64 numpy.

  q [B,C,Q,H,D], k_mem/v_mem [B,M,S,KH,D], idx/w [B,C,K]. Query head h reads kv head h // (H/KH).
  Returns out, or (out, dq, dk_mem, dv_mem, dw).
  """
  q, k_mem, v_mem, w = (np.asarray(a, np.float64) for a in (q, k_mem, v_mem, w))
  idx = np.asarray(idx)
  b_, c_, nq, h_, d = q.shape
  kh = k_mem.shape[3]
  grp = h_ // kh
  kk = idx.shape[2]
  scale = d ** -0.5
  out = np.zeros_like(q)
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k_mem), np.zeros_like(v_mem)
  dw = np.zeros_like(w)
  for b in range(b_):
    for c in range(c_):
      for i in range(kk):
        m = idx[b, c, i]
        for h in range(h_):
          j = h // grp
          kc, vc, qh = k_mem[b, m, :, j], v_mem[b, m, :, j], q[b, c, :, h]
          p = _chunk_probs(qh, kc, scale, softmax_one)  # Q, S
          o_i = p @ vc  # Q, D
          out[b, c, :, h] += w[b, c, i] * o_i
          if dout is None:
            continue
          do = np.asarray(dout[b, c, :, h], np.float64)  # Q, D
          delta = (do * o_i).sum(-1)  # D_i[m] = <dO, o_i>
          dw[b, c, i] += delta.sum()
          dv[b, m, :, j] += (w[b, c, i] * p).T @ do
          dp = do @ vc.T  # Q, S
          ds = w[b, c, i] * p * (dp - delta[:, None])
          dk[b, m, :, j] += scale * ds.T @ qh
          dq[b, c, :, h] += scale * ds @ kc
  if dout is None:
    return out
  return out, dq, dk, dv, dw


# ----------------------------------------------------------------------------------------------


def _close(actual, expected, tol, what):
  """Relative check: |a - e| <= tol * (|e| + max|e|)."""
  a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
  e = np.asarray(expected, np.float64)
  assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
  assert np.all(np.isfinite(a)), f"{what}: non-finite values"
  np.testing.assert_allclose(a, e, rtol=tol, atol=tol * max(np.abs(e).max(), 1e-30), err_msg=what)


def _inputs(seed, b, c, nq, h, kh, d, m, s, k, dtype=jnp.float32, qscale=2.0):
  """Random op inputs with a repeated pick (same idx twice in a row) and a zero-weight pick."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, c, nq, h, d)) * qscale
  k_mem = rng.normal(size=(b, m, s, kh, d))
  v_mem = rng.normal(size=(b, m, s, kh, d))
  idx = rng.integers(0, m, size=(b, c, k)).astype(np.int32)
  w = rng.uniform(0.1, 1.0, size=(b, c, k))
  if k >= 2:
    idx[0, 0, 1] = idx[0, 0, 0]  # repeated pick, adjacent
    idx[b - 1, c - 1, :2] = m - 1  # and one more, so dk/dv scatter-add twice into chunk m-1
    w[0, c - 1, k - 1] = 0.0  # zero-weight pick
  to = lambda a: jnp.asarray(a, dtype)
  return to(q), to(k_mem), to(v_mem), jnp.asarray(idx), jnp.asarray(w, jnp.float32)


# (B, C, Q, H, KH, D, M, S, K): GQA H/KH=2 with Q != S; MHA with Q == S; K=1; K=8.
SHAPES = [
    (2, 3, 7, 4, 2, 8, 5, 6, 3),
    (1, 4, 6, 2, 2, 16, 3, 6, 2),
    (2, 2, 5, 4, 2, 8, 4, 9, 1),
    (1, 2, 65, 2, 1, 16, 9, 64, 8),  # K=8, Q_CTX=65 over 64 keys
]


@pytest.mark.parametrize("softmax_one", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_vjp_float32(shape, softmax_one):
  """Forward, dq, dk_mem, dv_mem and dw match the float64 oracle to ~1e-5."""
  args = _inputs(hash((shape, softmax_one)) % 2**31, *shape)
  q, k_mem, v_mem, idx, w = args
  fn = lambda q_, k_, v_, w_: gca_attention(q_, k_, v_, idx, w_, softmax_one=softmax_one, impl="xla")
  out, vjp = jax.vjp(jax.jit(fn), q, k_mem, v_mem, w)
  assert out.dtype == jnp.float32 and out.shape == q.shape
  dout = np.random.default_rng(1).normal(size=q.shape)
  grads = vjp(jnp.asarray(dout, jnp.float32))
  ref = np_gca(q, k_mem, v_mem, idx, w, softmax_one=softmax_one, dout=dout)
  for name, got, want in zip(("out", "dq", "dk_mem", "dv_mem", "dw"), (out, *grads), ref):
    _close(got, want, 1e-5, name)


def test_softmax_one_changes_result_and_is_stable():
  """softmax_one matters, and large logits stay finite and exact (implicit zero logit in the max)."""
  q, k_mem, v_mem, idx, w = _inputs(3, 1, 2, 5, 2, 1, 8, 3, 6, 2, qscale=40.0)
  on = gca_attention(q, k_mem, v_mem, idx, w, softmax_one=True)
  off = gca_attention(q, k_mem, v_mem, idx, w, softmax_one=False)
  _close(on, np_gca(q, k_mem, v_mem, idx, w, softmax_one=True), 1e-5, "on")
  _close(off, np_gca(q, k_mem, v_mem, idx, w, softmax_one=False), 1e-5, "off")
  q0 = q * 0.0  # uniform logits: softmax_one output = S/(S+1) of the plain one
  on0 = gca_attention(q0, k_mem, v_mem, idx, w, softmax_one=True)
  off0 = gca_attention(q0, k_mem, v_mem, idx, w, softmax_one=False)
  s = k_mem.shape[2]
  np.testing.assert_allclose(np.asarray(on0), np.asarray(off0) * s / (s + 1), rtol=1e-5, atol=1e-6)


def test_zero_weight_pick_contributes_exactly_zero():
  """A zero-weight pick gives bitwise the same output whichever chunk it points at, and no
  gradient reaches a chunk picked only with weight zero."""
  b, c, nq, h, kh, d, m, s, k = 1, 2, 5, 4, 2, 8, 4, 6, 3
  q, k_mem, v_mem, idx, w = _inputs(7, b, c, nq, h, kh, d, m, s, k)
  idx = jnp.asarray([[[0, 1, 2], [1, 0, 2]]], jnp.int32)
  w = w.at[:, :, 2].set(0.0)  # chunk 2 is picked only with weight 0
  idx_other = idx.at[:, :, 2].set(3)  # point the zero-weight pick somewhere else
  fn = jax.jit(lambda ix, q_, k_, v_, w_: gca_attention(q_, k_, v_, ix, w_, softmax_one=True))
  out_a = fn(idx, q, k_mem, v_mem, w)
  out_b = fn(idx_other, q, k_mem, v_mem, w)  # same compiled program, idx is an argument
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))
  _close(out_a, np_gca(q, k_mem, v_mem, idx[:, :, :2], w[:, :, :2], softmax_one=True), 1e-5, "out")
  _, vjp_a = jax.vjp(functools.partial(fn, idx), q, k_mem, v_mem, w)
  dq, dk, dv, dw = vjp_a(jnp.ones_like(out_a))
  assert np.all(np.asarray(dk[:, 2]) == 0) and np.all(np.asarray(dv[:, 2]) == 0)
  assert np.all(np.asarray(dk[:, 3]) == 0) and np.all(np.asarray(dv[:, 3]) == 0)  # never picked
  assert np.all(np.asarray(dw[:, :, 2]) != 0)  # the weight itself still has a gradient <dO, o_i>
  assert np.all(np.isfinite(np.asarray(dq)))


def test_forward_and_vjp_bfloat16():
  """bfloat16 inputs: output/grads in bf16 (dw float32) within bf16 tolerance of the oracle."""
  shape = (2, 3, 7, 4, 2, 8, 5, 6, 3)
  q, k_mem, v_mem, idx, w = _inputs(11, *shape, dtype=jnp.bfloat16)
  fn = lambda q_, k_, v_, w_: gca_attention(q_, k_, v_, idx, w_, softmax_one=True)
  out, vjp = jax.vjp(jax.jit(fn), q, k_mem, v_mem, w)
  assert out.dtype == jnp.bfloat16
  dout = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.bfloat16)
  grads = vjp(dout)
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3 + [jnp.float32]
  # The oracle sees exactly the bf16-rounded inputs; the tolerance covers bf16 outputs and the
  # bf16 probabilities of the PV product (eps 2^-8).
  f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)
  ref = np_gca(f64(q), f64(k_mem), f64(v_mem), idx, f64(w), softmax_one=True, dout=f64(dout))
  for name, got, want in zip(("out", "dq", "dk_mem", "dv_mem", "dw"), (out, *grads), ref):
    _close(got, want, 3e-2, name)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _ok_args():
  return _inputs(0, 1, 2, 4, 4, 2, 8, 3, 5, 2)


def test_bad_ranks_raise():
  q, k_mem, v_mem, idx, w = _ok_args()
  with pytest.raises(ValueError, match=r"\[B,C,Q,H,D\]"):
    gca_attention(q[0], k_mem, v_mem, idx, w)
  with pytest.raises(ValueError, match=r"\[B,M,S,KH,D\]"):
    gca_attention(q, k_mem[0], v_mem[0], idx, w)


def test_heads_not_multiple_of_kv_heads_raise():
  q, k_mem, v_mem, idx, w = _ok_args()
  q3 = q[:, :, :, :3]  # H=3, KH=2
  with pytest.raises(ValueError, match="multiple of kv heads"):
    gca_attention(q3, k_mem, v_mem, idx, w)


def test_idx_w_mismatch_raise():
  q, k_mem, v_mem, idx, w = _ok_args()
  with pytest.raises(ValueError, match="idx"):
    gca_attention(q, k_mem, v_mem, idx, w[:, :, :1])
  with pytest.raises(ValueError, match="idx"):
    gca_attention(q, k_mem, v_mem, idx[:, :1], w[:, :1])  # C does not match q
  with pytest.raises(ValueError, match="integer"):
    gca_attention(q, k_mem, v_mem, idx.astype(jnp.float32), w)


def test_other_mismatches_raise():
  q, k_mem, v_mem, idx, w = _ok_args()
  with pytest.raises(ValueError, match="differ"):
    gca_attention(q, k_mem, v_mem[:, :, :4], idx, w)
  with pytest.raises(ValueError, match="head dim"):
    gca_attention(q, k_mem[..., :4], v_mem[..., :4], idx, w)
  with pytest.raises(ValueError, match="impl"):
    gca_attention(q, k_mem, v_mem, idx, w, impl="triton")


def test_pallas_without_interpret_on_cpu_is_a_clear_error():
  """The Mosaic kernel cannot run on the CPU backend: impl='pallas' says so and names the fix."""
  q, k_mem, v_mem, idx, w = _ok_args()
  with pytest.raises(ValueError, match="interpret=True"):
    gca_attention(q, k_mem, v_mem, idx, w, impl="pallas")
