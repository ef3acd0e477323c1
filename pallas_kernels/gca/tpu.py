"""Mosaic TPU kernels of GCA: forward, dq (with the per-pick delta) and dk/dv, in few large steps.

Design. Pallas TPU pays a fixed cost per grid step (about 0.35 us), so a grid step per picked
chunk (the first design: B*KH*C*K steps, ~99K per layer forward at the paper's per-device shape)
spends ~16x the forward's roofline on v5e (~50x on v5p) on step overhead alone. Here one grid step does a whole block of work
and gathers the picked chunks itself:

* forward and dq: grid (B, KH / block_kh, Cp / block_c). A step owns ``block_c`` query chunks
  and ``block_kh`` kv heads (all heads by default) and loops (``lax.fori_loop``) over the
  ``block_c * K`` picks of those chunks. The picked k/v chunk ``[block_kh, Sp, D]`` comes from
  HBM (``memory_space=pl.ANY``) by a manual DMA into a 2-slot VMEM buffer, the copy of pick
  j+1 started before pick j is computed; the top-k ids are scalar-prefetched into SMEM for the
  DMA addresses. Queries, output, lse and delta are ordinary blocks, pipelined across steps.
* dk/dv: grid (B, KH / block_kh, Mp / block_m). A step owns ``block_m`` memory chunks; the picks
  of each batch row, sorted by memory chunk (the reverse map), give the step a contiguous range
  ``[starts[m0], starts[m0 + block_m])`` (scalar-prefetched), and the step loops over it,
  DMA-ing the picking chunk's q / dO rows and its lse / delta row. dk/dv accumulate in float32
  VMEM and every memory chunk is written exactly once (zero when nobody picked it). No
  scatter-add: that would materialise per-pick dk/dv, K*C/M times the memory (8x at the paper
  shape), in HBM.

So the step count falls from B*KH*C*K to B*C/block_c (B*M/block_m for dk/dv): 132 instead of
~99K for the forward at the paper shape on v5e (``benchmarks/gca_kernel_model.py``).

Math (exact, per pick): a whole memory chunk (Sp keys, a few hundred at most) is one softmax,
so its max is the chunk's and no online rescaling is needed; softmax_one adds exp(-m) (the +1)
to each per-chunk denominator; the weighted mix acc += w_i * o_i makes a zero-weight pick add
exactly 0 to out, dq, dk and dv; the per-pick log-sum-exp is saved for the backward. Logits
are computed transposed ([Sp, R]: keys on sublanes) so per-row statistics are lane-dense rows.
Pad keys (s >= S) get a large negative logit; pad query rows are zero with zero cotangent.

VMEM per step at the paper shape (bf16, all 12 heads, R = Sp = D = 64; tiles padded to the
(8|16, 128) layout, so D = 64 costs a full 128 lanes; ``block_sizes.vmem_bytes`` computes it for
any shape; libtpu's own count, in its out-of-VMEM errors, was 18.78 MiB for dk/dv at block_m 8
and 20.75 MiB for the forward at block_c 16):
  forward  block_c  4 / 8 / 16  ->  5.8 / 10.8 / 20.9 MiB
  dq       block_c  4 / 8 / 16  ->  7.8 / 14.8 / 28.9 MiB
  dk/dv    block_m  2 / 4 / 8   ->  5.3 /  9.8 / 18.8 MiB
The per-generation defaults (``block_sizes.py``) stay inside the scoped VMEM limit libtpu
enforces: 16 MiB on v5e and v5p, 32 MiB on v6e (``block_sizes.check_vmem`` refuses larger
blocks with an error naming the field); AOT compiles prove it (``benchmarks/gca_kernel_aot.py``).

impl="auto" on TPU runs this kernel (``api.AUTO``) because the model says it beats the XLA path:
``benchmarks/results/gca_kernel_model.json``, rows kernel "tpu" variant "new" vs kernel "xla"
(summary "v5e fwd+bwd": 7.5 ms vs 65 ms modeled at the paper shape; 8-9x on v5p and v6e).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

NT = (((1,), (1,)), ((), ()))  # a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b
MASK = -1e30  # finite: exp underflows to exactly 0 and no inf - inf appears


class Dims(NamedTuple):
  """Kernel-layout sizes: q [b, cp, kh, r, d], memory [b, mp, kh, sp, d], k picks per chunk,
  c real query chunks (the dk/dv pass visits only their picks), itemsize of q/k/v."""

  b: int
  c: int
  cp: int
  kh: int
  r: int
  d: int
  mp: int
  sp: int
  k: int
  itemsize: int


# ----------------------------------------------------------------------------------------------
# grids and cost accounting (also read by benchmarks/gca_kernel_model.py)
# ----------------------------------------------------------------------------------------------


def query_grid(dims: Dims, block_c: int, block_kh: int) -> tuple[int, int, int]:
  """Grid of the forward and dq kernels: (batch, kv-head blocks, query-chunk blocks)."""
  return dims.b, dims.kh // block_kh, dims.cp // block_c


def dkv_grid(dims: Dims, block_m: int, block_kh: int) -> tuple[int, int, int]:
  """Grid of the dk/dv kernel: (batch, kv-head blocks, memory-chunk blocks)."""
  return dims.b, dims.kh // block_kh, dims.mp // block_m


def cost(pass_: str, dims: Dims) -> dict:
  """flops, transcendentals and HBM bytes of one kernel ("fwd", "dq" or "dkv"), as the kernel
  moves them: every pick's k/v chunk (fwd, dq) or picking q/dO rows (dkv) is one DMA."""
  b, c, cp, kh, r, d, mp, sp, k, isz = dims
  picks = b * cp * k if pass_ != "dkv" else b * c * k
  mm = 2 * r * sp * d * kh * picks  # flops of one [R, Sp, D] matmul per head per pick
  rows = b * cp * kh * r * d * isz  # one q-shaped array
  stat = picks * kh * r * 4  # one float32 [R] row per head per pick (lse or delta)
  chunk = kh * sp * d * isz  # one memory chunk of k or v
  if pass_ == "fwd":  # read q, w, picked k and v; write out and lse
    return dict(flops=2 * mm, transcendentals=picks * kh * r * sp,
                bytes=2 * rows + picks * 2 * chunk + stat + b * cp * k * 4)
  if pass_ == "dq":  # read q, dO, w, lse, picked k and v; write dq and delta
    return dict(flops=3 * mm, transcendentals=picks * kh * r * sp,
                bytes=3 * rows + picks * 2 * chunk + 2 * stat + b * cp * k * 4)
  if pass_ == "dkv":  # read k, v and each pick's q, dO, lse, delta rows; write dk and dv
    return dict(flops=4 * mm, transcendentals=picks * kh * r * sp,
                bytes=4 * b * mp * chunk + picks * (2 * kh * r * d * isz) + 2 * stat + picks * 12)
  raise ValueError(f"unknown pass {pass_!r}; use 'fwd', 'dq' or 'dkv'")


def _estimate(pass_, dims):
  c = cost(pass_, dims)
  return pl.CostEstimate(flops=int(c["flops"]), transcendentals=int(c["transcendentals"]),
                         bytes_accessed=int(c["bytes"]))


def _params():
  return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))


# ----------------------------------------------------------------------------------------------
# in-kernel helpers
# ----------------------------------------------------------------------------------------------


def _logits_t(k, q, scale, seq_len):
  """Scaled float32 logits, transposed (keys on sublanes, query rows on lanes): [Sp, R]."""
  s_t = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32) * scale
  if seq_len < k.shape[0]:
    s_t = jnp.where(lax.broadcasted_iota(jnp.int32, s_t.shape, 0) < seq_len, s_t, MASK)
  return s_t


def _row(x, i):
  """Row ``i`` (traced or static) of a small [n, R] tile, as [1, R]."""
  sel = lax.broadcasted_iota(jnp.int32, x.shape, 0) == i
  return jnp.sum(jnp.where(sel, x, 0.0), axis=0, keepdims=True)


def _with_row(x, i, val):
  """``x`` [n, R] with row ``i`` replaced by [1, R] ``val``: a sublane select."""
  return jnp.where(lax.broadcasted_iota(jnp.int32, x.shape, 0) == i, val, x)


def _weight(w_ref, cl, i):
  """Weight of pick ``i`` of the block's chunk ``cl`` as a [1, 1] array (w rides in VMEM)."""
  w = w_ref[0, cl]  # [1, K]
  return jnp.sum(jnp.where(lax.broadcasted_iota(jnp.int32, w.shape, 1) == i, w, 0.0), axis=1,
                 keepdims=True)


def _gather_loop(lo, hi, sources, bufs, sem, body):
  """``body(p, slot)`` for p in [lo, hi), with ``sources(p)`` (HBM views) copied into
  ``bufs[t].at[slot]`` by DMA one iteration ahead (2 slots: the copy of p+1 overlaps p)."""

  def copies(p, slot):
    return [pltpu.make_async_copy(src, buf.at[slot], sem.at[t, slot])
            for t, (src, buf) in enumerate(zip(sources(p), bufs))]

  @pl.when(lo < hi)
  def _():
    for cp in copies(lo, 0):
      cp.start()

  def step(p, carry):
    slot = lax.rem(p - lo, 2)
    for cp in copies(p, slot):
      cp.wait()

    @pl.when(p + 1 < hi)
    def _():
      for cp in copies(p + 1, 1 - slot):
        cp.start()

    body(p, slot)
    return carry

  lax.fori_loop(lo, hi, step, 0)


def _kv_sources(idx_ref, k_hbm, v_hbm, *, n_picks, block_c, block_kh, cp):
  """The picked k/v chunk of the step's p-th pick (all of the step's kv heads), in HBM."""
  b, hb, cb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  base = (b * cp + cb * block_c) * n_picks
  heads = pl.ds(hb * block_kh, block_kh)

  def sources(p):
    m = idx_ref[base + p]
    return k_hbm.at[b, m, heads], v_hbm.at[b, m, heads]

  return sources


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


def _fwd_kernel(idx_ref, q_ref, w_ref, k_hbm, v_hbm, o_ref, lse_ref, kbuf, vbuf, sem, acc_ref, *,
                n_picks, block_c, block_kh, cp, seq_len, scale, softmax_one):
  acc_ref[...] = jnp.zeros_like(acc_ref)

  def pick(p, slot):
    cl, i = lax.div(p, n_picks), lax.rem(p, n_picks)
    wt = _weight(w_ref, cl, i)
    lse = jnp.zeros(lse_ref.shape[3:], jnp.float32)  # [block_kh, R]
    for h in range(block_kh):
      s_t = _logits_t(kbuf[slot, h], q_ref[0, cl, h], scale, seq_len)
      m = jnp.max(s_t, axis=0, keepdims=True)  # the chunk's max: exact in one pass
      if softmax_one:
        m = jnp.maximum(m, 0.0)  # the implicit zero logit joins the max
      e_t = jnp.exp(s_t - m)
      l = jnp.sum(e_t, axis=0, keepdims=True)
      if softmax_one:
        l = l + jnp.exp(-m)  # the +1 of the off-by-one softmax, kept exactly
      v = vbuf[slot, h]
      o = lax.dot_general((e_t / l).astype(v.dtype), v, TN, preferred_element_type=jnp.float32)
      acc_ref[cl, h] += wt * o
      lse = _with_row(lse, h, m + jnp.log(l))
    lse_ref[0, cl, i] = lse

  sources = _kv_sources(idx_ref, k_hbm, v_hbm, n_picks=n_picks, block_c=block_c,
                        block_kh=block_kh, cp=cp)
  _gather_loop(0, block_c * n_picks, sources, (kbuf, vbuf), sem, pick)
  o_ref[0] = acc_ref[...].astype(o_ref.dtype)


def _dq_kernel(idx_ref, q_ref, w_ref, do_ref, lse_ref, k_hbm, v_hbm, dq_ref, delta_ref, kbuf, vbuf,
               sem, acc_ref, *, n_picks, block_c, block_kh, cp, seq_len, scale):
  acc_ref[...] = jnp.zeros_like(acc_ref)

  def pick(p, slot):
    cl, i = lax.div(p, n_picks), lax.rem(p, n_picks)
    wt = _weight(w_ref, cl, i) * scale
    lse = lse_ref[0, cl, i]  # [block_kh, R]
    delta = jnp.zeros_like(lse)
    for h in range(block_kh):
      k, v, do = kbuf[slot, h], vbuf[slot, h], do_ref[0, cl, h]
      p_t = jnp.exp(_logits_t(k, q_ref[0, cl, h], scale, seq_len) - _row(lse, h))
      dp_t = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
      # <dO, o_i> per row = sum_s P * dP: no need to recompute the per-pick output o_i.
      d_h = jnp.sum(p_t * dp_t, axis=0, keepdims=True)
      ds_t = wt * p_t * (dp_t - d_h)  # exactly 0 at zero weight
      acc_ref[cl, h] += lax.dot_general(ds_t.astype(k.dtype), k, TN,
                                        preferred_element_type=jnp.float32)
      delta = _with_row(delta, h, d_h)
    delta_ref[0, cl, i] = delta

  sources = _kv_sources(idx_ref, k_hbm, v_hbm, n_picks=n_picks, block_c=block_c,
                        block_kh=block_kh, cp=cp)
  _gather_loop(0, block_c * n_picks, sources, (kbuf, vbuf), sem, pick)
  dq_ref[0] = acc_ref[...].astype(dq_ref.dtype)


def _dkv_kernel(starts_ref, mem_ref, pos_ref, w_ref, k_ref, v_ref, q_hbm, do_hbm, lse_hbm,
                delta_hbm, dk_ref, dv_ref, qbuf, dobuf, lbuf, dbuf, sem, dk_acc, dv_acc, *,
                n_picks, n_sorted, n_starts, block_m, block_kh, seq_len, scale):
  b, hb, mb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  lo = starts_ref[b * n_starts + mb * block_m]
  hi = starts_ref[b * n_starts + (mb + 1) * block_m]
  base = b * n_sorted
  heads = pl.ds(hb * block_kh, block_kh)
  dk_acc[...] = jnp.zeros_like(dk_acc)
  dv_acc[...] = jnp.zeros_like(dv_acc)

  def sources(p):
    pos = pos_ref[base + p]  # the pick's flat (query chunk, slot) in its row
    c, i = lax.div(pos, n_picks), lax.rem(pos, n_picks)
    return q_hbm.at[b, c, heads], do_hbm.at[b, c, heads], lse_hbm.at[b, c, i, heads], \
        delta_hbm.at[b, c, i, heads]

  def pick(p, slot):
    mm = mem_ref[base + p] - mb * block_m
    w = w_ref[base + p]
    lse, delta = lbuf[slot], dbuf[slot]
    for h in range(block_kh):
      q, do, k, v = qbuf[slot, h], dobuf[slot, h], k_ref[0, mm, h], v_ref[0, mm, h]
      p_t = jnp.exp(_logits_t(k, q, scale, seq_len) - _row(lse, h))
      dv_acc[mm, h] += w * jnp.dot(p_t.astype(do.dtype), do, preferred_element_type=jnp.float32)
      dp_t = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
      ds_t = p_t * (dp_t - _row(delta, h))
      dk_acc[mm, h] += (w * scale) * jnp.dot(ds_t.astype(q.dtype), q,
                                             preferred_element_type=jnp.float32)

  _gather_loop(lo, hi, sources, (qbuf, dobuf, lbuf, dbuf), sem, pick)
  dk_ref[0] = dk_acc[...].astype(dk_ref.dtype)
  dv_ref[0] = dv_acc[...].astype(dv_ref.dtype)


# ----------------------------------------------------------------------------------------------
# pallas_calls
# ----------------------------------------------------------------------------------------------


def dims_of(q, k, n_chunks: int) -> Dims:
  b, cp, kh, r, d = q.shape
  return Dims(b=b, c=n_chunks, cp=cp, kh=kh, r=r, d=d, mp=k.shape[1], sp=k.shape[3],
              k=0, itemsize=q.dtype.itemsize)


def _query_specs(dims, block_c, block_kh, n_stat):
  """BlockSpecs of the q-shaped blocks and the [block_c, K, block_kh, R] stat blocks."""
  q_spec = pl.BlockSpec((1, block_c, block_kh, dims.r, dims.d),
                        lambda bi, hi, ci, idx: (bi, ci, hi, 0, 0))
  stat_spec = pl.BlockSpec((1, block_c, n_stat, block_kh, dims.r),
                           lambda bi, hi, ci, idx: (bi, ci, 0, hi, 0))
  w_spec = pl.BlockSpec((1, block_c, 1, n_stat), lambda bi, hi, ci, idx: (bi, ci, 0, 0))
  return q_spec, stat_spec, w_spec


def _kv_scratch(k, block_kh):
  slots = pltpu.VMEM((2, block_kh) + k.shape[3:], k.dtype)
  return [slots, slots, pltpu.SemaphoreType.DMA((2, 2))]


def fwd(q, k, v, idx_flat, w, *, seq_len, softmax_one, block_c, block_kh, interpret):
  """Forward: out [B, Cp, KH, R, D] (q dtype) and per-pick lse [B, Cp, K, KH, R] (float32).

  q: [B, Cp, KH, R, D]; k, v: [B, Mp, KH, Sp, D]; idx_flat: int32 [B*Cp*K]; w: f32 [B, Cp, 1, K].
  Cp must be a multiple of ``block_c`` and KH of ``block_kh``.
  """
  n_picks = w.shape[-1]
  dims = dims_of(q, k, q.shape[1])._replace(k=n_picks)
  q_spec, lse_spec, w_spec = _query_specs(dims, block_c, block_kh, n_picks)
  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  kernel = functools.partial(_fwd_kernel, n_picks=n_picks, block_c=block_c, block_kh=block_kh,
                             cp=dims.cp, seq_len=seq_len, scale=dims.d ** -0.5,
                             softmax_one=softmax_one)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=query_grid(dims, block_c, block_kh),
          in_specs=[q_spec, w_spec, any_spec, any_spec],
          out_specs=[q_spec, lse_spec],
          scratch_shapes=_kv_scratch(k, block_kh)
          + [pltpu.VMEM((block_c, block_kh, dims.r, dims.d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((dims.b, dims.cp, n_picks, dims.kh, dims.r), jnp.float32)],
      compiler_params=_params(),
      cost_estimate=_estimate("fwd", dims),
      interpret=interpret,
      name="gca_fwd",
  )(idx_flat, q, w, k, v)


def bwd_dq(q, k, v, idx_flat, w, do, lse, *, seq_len, block_c, block_kh, interpret):
  """dq [B, Cp, KH, R, D] and the per-pick delta <dO, o_i> [B, Cp, K, KH, R] (float32)."""
  n_picks = w.shape[-1]
  dims = dims_of(q, k, q.shape[1])._replace(k=n_picks)
  q_spec, stat_spec, w_spec = _query_specs(dims, block_c, block_kh, n_picks)
  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  kernel = functools.partial(_dq_kernel, n_picks=n_picks, block_c=block_c, block_kh=block_kh,
                             cp=dims.cp, seq_len=seq_len, scale=dims.d ** -0.5)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=query_grid(dims, block_c, block_kh),
          in_specs=[q_spec, w_spec, q_spec, stat_spec, any_spec, any_spec],
          out_specs=[q_spec, stat_spec],
          scratch_shapes=_kv_scratch(k, block_kh)
          + [pltpu.VMEM((block_c, block_kh, dims.r, dims.d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(lse.shape, jnp.float32)],
      compiler_params=_params(),
      cost_estimate=_estimate("dq", dims),
      interpret=interpret,
      name="gca_bwd_dq",
  )(idx_flat, q, w, do, lse, k, v)


def bwd_dkv(q, k, v, do, lse, delta, starts, mem_sorted, pos_sorted, w_sorted, *, n_chunks, seq_len,
            block_m, block_kh, interpret):
  """dk, dv of the whole memory [B, Mp, KH, Sp, D], summed over every pick of each chunk.

  The real chunks' picks of each batch row sorted by memory chunk (flat [B * n_chunks * K]):
  ``mem_sorted`` the chunk, ``pos_sorted`` the pick's flat (query chunk * K + slot), ``w_sorted``
  its weight (float32); ``starts`` [B * (Mp + 1)]: where memory chunk j's picks begin.
  """
  n_picks = lse.shape[2]
  dims = dims_of(q, k, n_chunks)._replace(k=n_picks)
  kv_spec = pl.BlockSpec((1, block_m, block_kh, dims.sp, dims.d),
                         lambda bi, hi, mi, *_: (bi, mi, hi, 0, 0))
  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  rows = pltpu.VMEM((2, block_kh, dims.r, dims.d), q.dtype)
  stat = pltpu.VMEM((2, block_kh, dims.r), jnp.float32)
  acc = pltpu.VMEM((block_m, block_kh, dims.sp, dims.d), jnp.float32)
  kernel = functools.partial(_dkv_kernel, n_picks=n_picks, n_sorted=n_chunks * n_picks,
                             n_starts=dims.mp + 1, block_m=block_m, block_kh=block_kh, seq_len=seq_len,
                             scale=dims.d ** -0.5)
  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=4, grid=dkv_grid(dims, block_m, block_kh),
          in_specs=[kv_spec, kv_spec, any_spec, any_spec, any_spec, any_spec],
          out_specs=[kv_spec, kv_spec],
          scratch_shapes=[rows, rows, stat, stat, pltpu.SemaphoreType.DMA((4, 2)), acc, acc]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=_params(),
      cost_estimate=_estimate("dkv", dims),
      interpret=interpret,
      name="gca_bwd_dkv",
  )(starts, mem_sorted, pos_sorted, w_sorted, k, v, q, do, lse, delta)
