"""The custom_vjp of the fused GCA kernel: forward, dq, dk/dv and dW glued in one place.

Works on kernel-layout arrays (``layout.py``): q [B, KH, Cp, R, D], k/v [B, KH, M, Sp, D],
idx int32 [B, Cp, K], w float32 [B, Cp, K]. Residuals: q, k, v, idx, w and the per-pick
log-sum-exp [B, KH, Cp, K, R]; neither the output nor the per-pick outputs are stored.

dW[b, c, i] = sum over heads and query rows of <dO, o_i> (method-spec §4.3): the dq kernel
emits that per-row delta for every pick, so dW is one XLA reduction of it. Zero-weight picks
contribute exactly zero to the output, dq, dk and dv (every term carries the factor w_i); their
dW stays the exact derivative <dO, o_i>, as the oracle's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gca import tpu


def make_gca_kernel(*, seq_len: int, n_chunks: int, softmax_one: bool, block_c: int, interpret):
  """Returns ``f(q, k, v, idx, w) -> out`` (kernel layout) with exact gradients in q, k, v, w.

  seq_len: the true S (keys beyond it are padding); n_chunks: the true C (chunks beyond it are
  padding, skipped by the dk/dv pass).
  """

  def forward(q, k, v, idx, w):
    b, cp, n_picks = idx.shape
    out, lse = tpu.fwd(q, k, v, idx.reshape(-1), w.reshape(b, cp, 1, n_picks), seq_len=seq_len,
                       softmax_one=softmax_one, block_c=block_c, interpret=interpret)
    return out, lse

  @jax.custom_vjp
  def gca(q, k, v, idx, w):
    return forward(q, k, v, idx, w)[0]

  def gca_fwd(q, k, v, idx, w):
    out, lse = forward(q, k, v, idx, w)
    return out, (q, k, v, idx, w, lse)

  def gca_bwd(res, do):
    q, k, v, idx, w, lse = res
    b, cp, n_picks = idx.shape
    dq, delta = tpu.bwd_dq(q, k, v, idx.reshape(-1), w.reshape(b, cp, 1, n_picks), do, lse,
                           seq_len=seq_len, block_c=block_c, interpret=interpret)
    dw = jnp.sum(delta, axis=(1, 4))  # over kv heads and rows (= query heads x positions)
    # Reverse map for dk/dv: the real chunks' picks sorted by memory chunk (stable).
    c = n_chunks
    flat = idx[:, :c].reshape(b, c * n_picks)
    order = jnp.argsort(flat, axis=1, stable=True)
    mem_sorted = jnp.take_along_axis(flat, order, axis=1)
    w_sorted = jnp.take_along_axis(w[:, :c].reshape(b, -1), order, axis=1)[:, :, None, None]
    dk, dv = tpu.bwd_dkv(q, k, v, do, lse, delta, w_sorted,
                         mem_sorted.reshape(-1).astype(jnp.int32),
                         (order // n_picks).reshape(-1).astype(jnp.int32),
                         (order % n_picks).reshape(-1).astype(jnp.int32),
                         seq_len=seq_len, interpret=interpret)
    didx = np.zeros(idx.shape, jax.dtypes.float0)
    return dq, dk, dv, didx, dw.astype(w.dtype)

  gca.defvjp(gca_fwd, gca_bwd)
  return gca
