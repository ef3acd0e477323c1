"""Mosaic TPU kernels of GCA: forward, dq (with the per-pick delta) and dk/dv.

All three work on the kernel layout of ``layout.py``: queries ``[B, KH, C, R, D]`` with
``R = G * Qp`` rows (the G query heads of one kv head stacked, so one fetched memory chunk
serves all of them) and memory ``[B, KH, M, Sp, D]``. The top-k chunk ids are scalar-prefetched
into SMEM and drive the k/v BlockSpec index maps, so the pipeline DMAs exactly the picked chunks.

One grid step holds a whole memory chunk (Sp keys, a few hundred at most), so the per-chunk
softmax is exact in one pass: the row max is the chunk's max and no rescaling is needed. Pad keys
(s >= S) get a large negative logit; pad query rows are zero and get zero upstream gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b
MASK = -1e30  # finite: exp underflows to exactly 0 and no inf - inf appears


def _logits_t(k, q, scale, seq_len):
  """Scaled float32 logits, transposed (keys on sublanes, query rows on lanes): [Sp, R].

  This orientation makes every per-row statistic (max, lse, delta) a lane-dense [1, R] row that
  is stored as one row of a [K, R] block, with no in-kernel transpose.
  """
  s_t = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32) * scale
  if seq_len < k.shape[0]:
    s_t = jnp.where(lax.broadcasted_iota(jnp.int32, s_t.shape, 0) < seq_len, s_t, MASK)
  return s_t


def _row(x, i):
  """Row ``i`` (traced) of a small [K, R] block, as [1, R]."""
  sel = lax.broadcasted_iota(jnp.int32, x.shape, 0) == i
  return jnp.sum(jnp.where(sel, x, 0.0), axis=0, keepdims=True)


def _with_row(x, i, val):
  """``x`` [K, R] with row ``i`` (traced) replaced by [1, R] ``val``: a sublane select."""
  return jnp.where(lax.broadcasted_iota(jnp.int32, x.shape, 0) == i, val, x)


def _weight(w_ref, cl, i):
  """The pick's weight as a [1, 1] array (w rides in VMEM, not SMEM)."""
  w = w_ref[0, cl]  # [1, K]
  return jnp.sum(jnp.where(lax.broadcasted_iota(jnp.int32, w.shape, 1) == i, w, 0.0), axis=1,
                 keepdims=True)


def _fwd_kernel(idx_ref, q_ref, k_ref, v_ref, w_ref, o_ref, lse_ref, acc_ref, *, n_picks, seq_len,
                scale, softmax_one):
  j = pl.program_id(3)
  cl, i = lax.div(j, n_picks), lax.rem(j, n_picks)  # j >= 0: no sign fix-ups

  @pl.when(i == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  s_t = _logits_t(k_ref[0, 0, 0], q_ref[0, 0, cl], scale, seq_len)
  m = jnp.max(s_t, axis=0, keepdims=True)  # the chunk's max: exact in one pass
  if softmax_one:
    m = jnp.maximum(m, 0.0)  # the implicit zero logit joins the max
  e_t = jnp.exp(s_t - m)
  l = jnp.sum(e_t, axis=0, keepdims=True)
  if softmax_one:
    l = l + jnp.exp(-m)  # the +1 of the off-by-one softmax, kept exactly (method-spec §4.4)
  v = v_ref[0, 0, 0]
  o = lax.dot_general((e_t / l).astype(v.dtype), v, TN, preferred_element_type=jnp.float32)
  acc_ref[...] += _weight(w_ref, cl, i) * o
  lse_ref[0, 0, cl] = _with_row(lse_ref[0, 0, cl], i, m + jnp.log(l))

  @pl.when(i == n_picks - 1)
  def _():
    o_ref[0, 0, cl] = acc_ref[...].astype(o_ref.dtype)


def _dq_kernel(idx_ref, q_ref, k_ref, v_ref, w_ref, do_ref, lse_ref, dq_ref, delta_ref, acc_ref, *,
               n_picks, seq_len, scale):
  j = pl.program_id(3)
  cl, i = lax.div(j, n_picks), lax.rem(j, n_picks)

  @pl.when(i == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  k, v, do = k_ref[0, 0, 0], v_ref[0, 0, 0], do_ref[0, 0, cl]
  p_t = jnp.exp(_logits_t(k, q_ref[0, 0, cl], scale, seq_len) - _row(lse_ref[0, 0, cl], i))
  dp_t = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
  # <dO, o_i> per row = sum_s P * dP: no need to recompute the per-pick output o_i.
  delta = jnp.sum(p_t * dp_t, axis=0, keepdims=True)
  ds_t = (_weight(w_ref, cl, i) * scale) * p_t * (dp_t - delta)  # exactly 0 at zero weight
  acc_ref[...] += lax.dot_general(ds_t.astype(k.dtype), k, TN, preferred_element_type=jnp.float32)
  delta_ref[0, 0, cl] = _with_row(delta_ref[0, 0, cl], i, delta)

  @pl.when(i == n_picks - 1)
  def _():
    dq_ref[0, 0, cl] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(mem_ref, chunk_ref, slot_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, w_ref,
                dk0_ref, dv0_ref, dk_ref, dv_ref, dk_acc, dv_acc, *, seq_len, scale):
  del chunk_ref, dk0_ref, dv0_ref  # used by the index maps / aliased zeros only
  b, j, n = pl.program_id(0), pl.program_id(2), pl.num_programs(2)
  base = b * n
  cur = mem_ref[base + j]
  first = jnp.logical_or(j == 0, mem_ref[base + jnp.maximum(j - 1, 0)] != cur)
  last = jnp.logical_or(j == n - 1, mem_ref[base + jnp.minimum(j + 1, n - 1)] != cur)

  @pl.when(first)
  def _():
    dk_acc[...] = jnp.zeros_like(dk_acc)
    dv_acc[...] = jnp.zeros_like(dv_acc)

  slot = slot_ref[base + j]
  q, k, v, do = q_ref[0, 0, 0], k_ref[0, 0, 0], v_ref[0, 0, 0], do_ref[0, 0, 0]
  w = w_ref[0, 0]  # [1, 1]
  p_t = jnp.exp(_logits_t(k, q, scale, seq_len) - _row(lse_ref[0, 0, 0], slot))
  dv_acc[...] += w * jnp.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
  dp_t = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
  ds_t = p_t * (dp_t - _row(delta_ref[0, 0, 0], slot))
  dk_acc[...] += (w * scale) * jnp.dot(ds_t.astype(q.dtype), q, preferred_element_type=jnp.float32)

  @pl.when(last)
  def _():
    dk_ref[0, 0, 0] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[0, 0, 0] = dv_acc[...].astype(dv_ref.dtype)


def _params(*semantics):
  return pltpu.CompilerParams(dimension_semantics=semantics)


def _cost(n_steps, r, sp, d, matmuls, nbytes):
  """What XLA's cost model should assume for a pallas_call (it cannot see inside the kernel)."""
  return pl.CostEstimate(flops=int(n_steps * matmuls * 2 * r * sp * d),
                         transcendentals=int(n_steps * r * sp), bytes_accessed=int(nbytes))


def fwd(q, k, v, idx_flat, w, *, seq_len, softmax_one, block_c, interpret):
  """Forward: out [B, KH, C, R, D] (q dtype) and per-pick lse [B, KH, C, K, R] (float32).

  q: [B, KH, C, R, D]; k, v: [B, KH, M, Sp, D]; idx_flat: int32 [B*C*K]; w: f32 [B, C, 1, K].
  C must be a multiple of ``block_c``.
  """
  b, kh, c, r, d = q.shape
  sp = k.shape[3]
  n_picks = w.shape[-1]
  grid = (b, kh, c // block_c, block_c * n_picks)

  def q_map(bi, hi, ci, j, idx):
    return bi, hi, ci, 0, 0

  def kv_map(bi, hi, ci, j, idx):
    return bi, hi, idx[(bi * c + ci * block_c + lax.div(j, n_picks)) * n_picks + lax.rem(j, n_picks)], 0, 0

  q_spec = pl.BlockSpec((1, 1, block_c, r, d), q_map)
  kv_spec = pl.BlockSpec((1, 1, 1, sp, d), kv_map)
  w_spec = pl.BlockSpec((1, block_c, 1, n_picks), lambda bi, hi, ci, j, idx: (bi, ci, 0, 0))
  lse_spec = pl.BlockSpec((1, 1, block_c, n_picks, r), q_map)
  kernel = functools.partial(_fwd_kernel, n_picks=n_picks, seq_len=seq_len, scale=d ** -0.5,
                             softmax_one=softmax_one)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=grid,
          in_specs=[q_spec, kv_spec, kv_spec, w_spec],
          out_specs=[q_spec, lse_spec],
          scratch_shapes=[pltpu.VMEM((r, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, kh, c, n_picks, r), jnp.float32)],
      compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
      cost_estimate=_cost(b * kh * c * n_picks, r, sp, d, 2,
                          2 * q.nbytes + b * kh * c * n_picks * 2 * sp * d * k.dtype.itemsize),
      interpret=interpret,
      name="gca_fwd",
  )(idx_flat, q, k, v, w)


def bwd_dq(q, k, v, idx_flat, w, do, lse, *, seq_len, block_c, interpret):
  """dq [B, KH, C, R, D] and the per-pick delta <dO, o_i> [B, KH, C, K, R] (float32)."""
  b, kh, c, r, d = q.shape
  sp = k.shape[3]
  n_picks = w.shape[-1]
  grid = (b, kh, c // block_c, block_c * n_picks)

  def q_map(bi, hi, ci, j, idx):
    return bi, hi, ci, 0, 0

  def kv_map(bi, hi, ci, j, idx):
    return bi, hi, idx[(bi * c + ci * block_c + lax.div(j, n_picks)) * n_picks + lax.rem(j, n_picks)], 0, 0

  q_spec = pl.BlockSpec((1, 1, block_c, r, d), q_map)
  kv_spec = pl.BlockSpec((1, 1, 1, sp, d), kv_map)
  w_spec = pl.BlockSpec((1, block_c, 1, n_picks), lambda bi, hi, ci, j, idx: (bi, ci, 0, 0))
  lse_spec = pl.BlockSpec((1, 1, block_c, n_picks, r), q_map)
  kernel = functools.partial(_dq_kernel, n_picks=n_picks, seq_len=seq_len, scale=d ** -0.5)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=grid,
          in_specs=[q_spec, kv_spec, kv_spec, w_spec, q_spec, lse_spec],
          out_specs=[q_spec, lse_spec],
          scratch_shapes=[pltpu.VMEM((r, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, kh, c, n_picks, r), jnp.float32)],
      compiler_params=_params("parallel", "parallel", "parallel", "arbitrary"),
      cost_estimate=_cost(b * kh * c * n_picks, r, sp, d, 4,
                          3 * q.nbytes + b * kh * c * n_picks * 2 * sp * d * k.dtype.itemsize),
      interpret=interpret,
      name="gca_bwd_dq",
  )(idx_flat, q, k, v, w, do, lse)


def bwd_dkv(q, k, v, do, lse, delta, w_sorted, mem_sorted, chunk_sorted, slot_sorted, *,
            seq_len, interpret):
  """dk, dv of the whole memory [B, KH, M, Sp, D], summed over every pick of each chunk.

  Reverse map, not scatter-add: the picks of each batch row are visited sorted by memory chunk
  (``mem_sorted`` etc., flat [B * C * K]), so all picks of one chunk are consecutive grid steps
  and its dk/dv block stays resident in VMEM as a float32 accumulator, written once. A
  scatter-add would first materialise per-pick dk/dv of size K * C / M times the whole memory
  (8x at the paper shape) in HBM. Chunks nobody picked are never visited: the outputs alias
  zero-filled inputs, so their gradient is exactly zero.

  lse, delta: [B, KH, C, K, R] float32; w_sorted: [B, C * K, 1, 1] float32.
  """
  b, kh, c, r, d = q.shape
  sp = k.shape[3]
  n = w_sorted.shape[1]
  n_picks = lse.shape[3]

  def q_map(bi, hi, j, mem, chunk, slot):
    return bi, hi, chunk[bi * n + j], 0, 0

  def kv_map(bi, hi, j, mem, chunk, slot):
    return bi, hi, mem[bi * n + j], 0, 0


  q_spec = pl.BlockSpec((1, 1, 1, r, d), q_map)
  kv_spec = pl.BlockSpec((1, 1, 1, sp, d), kv_map)
  row_spec = pl.BlockSpec((1, 1, 1, n_picks, r), q_map)
  w_spec = pl.BlockSpec((1, 1, 1, 1), lambda bi, hi, j, mem, chunk, slot: (bi, j, 0, 0))
  kernel = functools.partial(_dkv_kernel, seq_len=seq_len, scale=d ** -0.5)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=3, grid=(b, kh, n),
          in_specs=[q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec, w_spec, kv_spec, kv_spec],
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[pltpu.VMEM((sp, d), jnp.float32), pltpu.VMEM((sp, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      # Operand numbering counts the 3 prefetch arrays: the zero inputs are operands 10 and 11.
      input_output_aliases={10: 0, 11: 1},
      compiler_params=_params("parallel", "parallel", "arbitrary"),
      cost_estimate=_cost(b * kh * n, r, sp, d, 4,
                          b * kh * n * (2 * r * d * q.dtype.itemsize + 2 * sp * d * k.dtype.itemsize)
                          + 2 * k.nbytes),
      interpret=interpret,
      name="gca_bwd_dkv",
  )(mem_sorted, chunk_sorted, slot_sorted, q, k, v, do, lse, delta, w_sorted,
    jnp.zeros(k.shape, k.dtype), jnp.zeros(v.shape, v.dtype))
