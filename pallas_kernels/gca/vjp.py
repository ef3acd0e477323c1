"""The custom_vjp of the TPU GCA kernels: forward, dq, dk/dv and dW glued in one place.

Works on kernel-layout arrays (``layout.py``): q [B, Cp, KH, R, D], k/v [B, Mp, KH, Sp, D],
idx int32 [B, Cp, K], w float32 [B, Cp, K]. Residuals: q, k, v, idx, w and the per-pick
log-sum-exp [B, Cp, K, KH, R]; neither the output nor the per-pick outputs are stored.

dW[b, c, i] = sum over heads and query rows of <dO, o_i> (see docs/method.md): the dq kernel
emits that per-row delta for every pick, so dW is one XLA reduction of it. Zero-weight picks
contribute exactly zero to the output, dq, dk and dv (every term carries the factor w_i); their
dW stays the exact derivative <dO, o_i>, as the oracle's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gca import tpu
from pallas_kernels.gca.remat import tag_saved


def reverse_map(idx, w, n_chunks: int, n_mem: int):
  """The real chunks' picks of each row sorted by memory chunk (stable), flat for SMEM:
  (starts [B*(n_mem+1)], mem [B*n], pos [B*n], w [B*n]) with n = n_chunks * K; memory chunk j's
  picks of row b are entries starts[b, j] .. starts[b, j+1] of that row."""
  b, _, n_picks = idx.shape
  flat = idx[:, :n_chunks].reshape(b, n_chunks * n_picks)
  order = jnp.argsort(flat, axis=1, stable=True)
  mem_sorted = jnp.take_along_axis(flat, order, axis=1)
  w_sorted = jnp.take_along_axis(w[:, :n_chunks].reshape(b, -1), order, axis=1)
  starts = jax.vmap(lambda row: jnp.searchsorted(row, jnp.arange(n_mem + 1), side="left"))(mem_sorted)
  i32 = lambda x: x.reshape(-1).astype(jnp.int32)
  return i32(starts), i32(mem_sorted), i32(order), w_sorted.reshape(-1).astype(jnp.float32)


def make_gca_kernel(*, seq_len: int, n_chunks: int, softmax_one: bool, block_sizes, interpret):
  """Returns ``f(q, k, v, idx, w) -> out`` (kernel layout) with exact gradients in q, k, v, w.

  seq_len: the true S (keys beyond it are padding); n_chunks: the true C (chunks beyond it are
  padding, skipped by the dk/dv pass); block_sizes: a resolved ``BlockSizes`` (block_kh set).
  """
  bs = block_sizes

  def forward(q, k, v, idx, w):
    b, cp, n_picks = idx.shape
    return tpu.fwd(q, k, v, idx.reshape(-1), w.reshape(b, cp, 1, n_picks), seq_len=seq_len,
                   softmax_one=softmax_one, block_c=bs.block_c_fwd, block_kh=bs.block_kh,
                   interpret=interpret)

  @jax.custom_vjp
  def gca(q, k, v, idx, w):
    return forward(q, k, v, idx, w)[0]

  def gca_fwd(q, k, v, idx, w):
    out, lse = tag_saved(*forward(q, k, v, idx, w))  # kept by a save_gca remat policy
    return out, (q, k, v, idx, w, lse)

  def gca_bwd(res, do):
    q, k, v, idx, w, lse = res
    b, cp, n_picks = idx.shape
    dq, delta = tpu.bwd_dq(q, k, v, idx.reshape(-1), w.reshape(b, cp, 1, n_picks), do, lse,
                           seq_len=seq_len, block_c=bs.block_c_dq, block_kh=bs.block_kh,
                           interpret=interpret)
    dw = jnp.sum(delta, axis=(3, 4))  # over kv heads and rows (= query heads x positions)
    dk, dv = tpu.bwd_dkv(q, k, v, do, lse, delta, *reverse_map(idx, w, n_chunks, k.shape[1]),
                         n_chunks=n_chunks, seq_len=seq_len, block_m=bs.block_m_dkv,
                         block_kh=bs.block_kh, interpret=interpret)
    didx = np.zeros(idx.shape, jax.dtypes.float0)
    return dq, dk, dv, didx, dw.astype(w.dtype)

  gca.defvjp(gca_fwd, gca_bwd)
  return gca
