"""Pallas Triton kernels of GCA: forward, dq (with the per-pick delta) and dk/dv (reverse map).

Why Triton and not Mosaic GPU, and what the JAX 0.11 deprecation of this backend means: ``gpu.py``.

They work on the public layout, padded (``gpu.py`` pads; nothing is transposed): q, dO, out, dq
[B, C, Qp, H, Dp]; memory k, v, dk, dv [B, M, Sp, KH, Dp]; idx, w [B, C, K]; the per-pick
statistics lse and delta [B, C, H, K, Qp] float32. Qp is Q rounded up to the row tile, Sp and Dp
are S and D rounded up to powers of two (Triton tensors must have power-of-two shapes); pad keys
get a large negative logit, pad rows and pad head dims are zero.

Triton has no scalar prefetch, so the top-k ids cannot drive BlockSpec index maps as on TPU:
each program reads its picks from ``idx_ref`` and gathers the chunk by indexing the memory ref
with the value (one strided [Sp, Dp] load per pick; the loop is software-pipelined by Triton).
One program = one query head x one row tile x one query chunk; the G query heads of a kv head are
adjacent programs, so their repeated reads of the same chunk are served by L2.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

MASK = -1e30  # finite: exp underflows to exactly 0 and no inf - inf appears


def grids(*, batch, n_chunks, q_pad, heads, kv_heads, n_mem, rows, s_pad, keys
          ) -> dict[str, tuple[int, ...]]:
  """The launch grids of the three kernels (also what ``gpu_cost.cost_model`` counts)."""
  q_grid = (heads, q_pad // rows, batch * n_chunks)
  return {"fwd": q_grid, "dq": q_grid, "dkv": (kv_heads, batch * n_mem, s_pad // keys)}


def _logits(q, k, scale, seq_len):
  """Scaled float32 logits [rows, Sp] of one pick, pad keys masked."""
  s = plgpu.dot(q, k, trans_b=True) * scale
  if seq_len < k.shape[0]:
    s = jnp.where(lax.broadcasted_iota(jnp.int32, s.shape, 1) < seq_len, s, MASK)
  return s


def _q_specs(n_chunks, group, rows, dp, n_picks):
  """BlockSpecs of the per-program query tile, its picks and its per-pick rows."""
  def bc(hh, r, j):
    return lax.div(j, n_chunks), lax.rem(j, n_chunks)

  q = pl.BlockSpec((None, None, rows, None, dp), lambda hh, r, j: (*bc(hh, r, j), r, hh, 0))
  picks = pl.BlockSpec((None, None, n_picks), lambda hh, r, j: (*bc(hh, r, j), 0))
  stats = pl.BlockSpec((None, None, None, n_picks, rows),
                       lambda hh, r, j: (*bc(hh, r, j), hh, 0, r))

  def mem(shape):  # the whole memory of this query chunk's batch row and kv head: [M, Sp, Dp]
    return pl.BlockSpec((None, shape[1], shape[2], None, dp),
                        lambda hh, r, j: (lax.div(j, n_chunks), 0, 0, lax.div(hh, group), 0))

  return q, picks, stats, mem


def _fwd_kernel(idx_ref, w_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, n_picks, seq_len, scale,
                softmax_one):
  q = q_ref[...]

  def pick(i, acc):
    chunk = idx_ref[i]
    k, v = k_ref[chunk], v_ref[chunk]
    s = _logits(q, k, scale, seq_len)
    m = jnp.max(s, axis=1)  # the chunk's max: exact in one pass
    if softmax_one:
      m = jnp.maximum(m, 0.0)  # the implicit zero logit joins the max
    e = jnp.exp(s - m[:, None])
    l = jnp.sum(e, axis=1)
    if softmax_one:
      l = l + jnp.exp(-m)  # the +1 of the off-by-one softmax, exactly
    lse_ref[i, :] = m + jnp.log(l)
    o = plgpu.dot(e.astype(v.dtype), v)
    return acc + (w_ref[i] / l)[:, None] * o

  acc = lax.fori_loop(0, n_picks, pick, jnp.zeros(q.shape, jnp.float32))
  o_ref[...] = acc.astype(o_ref.dtype)


def _dq_kernel(idx_ref, w_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, dq_ref, delta_ref, *, n_picks,
               seq_len, scale):
  q, do = q_ref[...], do_ref[...]

  def pick(i, acc):
    chunk = idx_ref[i]
    k, v = k_ref[chunk], v_ref[chunk]
    p = jnp.exp(_logits(q, k, scale, seq_len) - lse_ref[i, :][:, None])
    dp = plgpu.dot(do, v, trans_b=True)
    # <dO, o_i> per row = sum_s P * dP: the per-pick output o_i is never recomputed.
    delta = jnp.sum(p * dp, axis=1)
    delta_ref[i, :] = delta
    ds = (w_ref[i] * scale) * p * (dp - delta[:, None])  # exactly 0 at zero weight
    return acc + plgpu.dot(ds.astype(k.dtype), k)

  acc = lax.fori_loop(0, n_picks, pick, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = acc.astype(dq_ref.dtype)


def _launch(kernel, grid, in_specs, out_specs, out_shape, *, warps, stages, interpret, name):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=plgpu.CompilerParams(num_warps=warps, num_stages=stages),
      interpret=interpret, name=name)


def _grids(q, k, rows, keys=None):
  b, c, qp, h, _ = q.shape
  return grids(batch=b, n_chunks=c, q_pad=qp, heads=h, kv_heads=k.shape[3], n_mem=k.shape[1],
               rows=rows, s_pad=k.shape[2], keys=keys or k.shape[2])


def fwd(q, k, v, idx, w, *, seq_len, head_dim, softmax_one, rows, warps, stages, interpret):
  """out [B, C, Qp, H, Dp] (q dtype) and the per-pick lse [B, C, H, K, Qp] (float32)."""
  b, c, qp, h, dp = q.shape
  n_picks = idx.shape[2]
  q_spec, picks, stats, mem = _q_specs(c, h // k.shape[3], rows, dp, n_picks)
  kernel = functools.partial(_fwd_kernel, n_picks=n_picks, seq_len=seq_len,
                             scale=head_dim ** -0.5, softmax_one=softmax_one)
  return _launch(kernel, _grids(q, k, rows)["fwd"],
                 [picks, picks, q_spec, mem(k.shape), mem(v.shape)], [q_spec, stats],
                 [jax.ShapeDtypeStruct(q.shape, q.dtype),
                  jax.ShapeDtypeStruct((b, c, h, n_picks, qp), jnp.float32)],
                 warps=warps, stages=stages, interpret=interpret, name="gca_gpu_fwd")(
                     idx, w, q, k, v)


def bwd_dq(q, k, v, idx, w, do, lse, *, seq_len, head_dim, rows, warps, stages, interpret):
  """dq [B, C, Qp, H, Dp] and the per-pick delta <dO, o_i> [B, C, H, K, Qp] (float32)."""
  b, c, qp, h, dp = q.shape
  n_picks = idx.shape[2]
  q_spec, picks, stats, mem = _q_specs(c, h // k.shape[3], rows, dp, n_picks)
  kernel = functools.partial(_dq_kernel, n_picks=n_picks, seq_len=seq_len, scale=head_dim ** -0.5)
  return _launch(kernel, _grids(q, k, rows)["dq"],
                 [picks, picks, q_spec, mem(k.shape), mem(v.shape), q_spec, stats],
                 [q_spec, stats],
                 [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(lse.shape, jnp.float32)],
                 warps=warps, stages=stages, interpret=interpret, name="gca_gpu_dq")(
                     idx, w, q, k, v, do, lse)


def _dkv_kernel(sched_ref, offs_ref, chunk_ref, slot_ref, wsort_ref, q_ref, k_ref, v_ref, do_ref,
                lse_ref, delta_ref, dk_ref, dv_ref, *, n_mem, group, rows, keys, seq_len, scale):
  kh, p, tile = pl.program_id(0), sched_ref[pl.program_id(1)], pl.program_id(2)
  b, m = lax.div(p, n_mem), lax.rem(p, n_mem)
  ks = pl.ds(tile * keys, keys)  # this program's key tile of the chunk
  k, v = k_ref[b, m, ks, kh, :], v_ref[b, m, ks, kh, :]
  real_key = tile * keys + lax.broadcasted_iota(jnp.int32, (keys, rows), 0) < seq_len
  n_row_blocks = q_ref.shape[2] // rows

  def pick(j, acc):
    c, i, w = chunk_ref[j], slot_ref[j], wsort_ref[j]

    def head_rows(t, acc):  # the G query heads of this kv head x the row tiles
      dk, dv = acc
      h = kh * group + lax.div(t, n_row_blocks)
      r = pl.ds(lax.rem(t, n_row_blocks) * rows, rows)
      q, do = q_ref[b, c, r, h, :], do_ref[b, c, r, h, :]
      s_t = plgpu.dot(k, q, trans_b=True) * scale  # [keys, rows]: keys on rows, like dk/dv
      s_t = jnp.where(real_key, s_t, MASK)
      p_t = jnp.exp(s_t - lse_ref[b, c, h, i, r][None, :])
      dv = dv + w * plgpu.dot(p_t.astype(do.dtype), do)
      dp_t = plgpu.dot(v, do, trans_b=True)
      ds_t = p_t * (dp_t - delta_ref[b, c, h, i, r][None, :])
      return dk + (w * scale) * plgpu.dot(ds_t.astype(q.dtype), q), dv

    return lax.fori_loop(0, group * n_row_blocks, head_rows, acc)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(offs_ref[p], offs_ref[p + 1], pick, (zeros, zeros))
  dk_ref[b, m, ks, kh, :] = dk.astype(dk_ref.dtype)
  dv_ref[b, m, ks, kh, :] = dv.astype(dv_ref.dtype)


def reverse_map(idx, w, n_mem):
  """The picks sorted by (batch row, memory chunk), stably, for the dk/dv pass.

  Returns sched [B*M] (the (b, m) keys, most-picked first: the GPU starts the longest programs
  first, which bounds the tail when a few chunks are picked by many query chunks), offs
  [B*M + 1] (key p's picks are entries offs[p]:offs[p+1]), and per sorted pick its query chunk,
  slot and weight [B*C*K].
  """
  b, c, n_picks = idx.shape
  key = (jnp.arange(b, dtype=jnp.int32)[:, None, None] * n_mem + idx).reshape(-1)
  order = jnp.argsort(key, stable=True).astype(jnp.int32)
  offs = jnp.searchsorted(key[order], jnp.arange(b * n_mem + 1, dtype=jnp.int32)).astype(jnp.int32)
  sched = jnp.argsort(offs[:-1] - offs[1:], stable=True).astype(jnp.int32)  # count, descending
  within = order % (c * n_picks)
  return sched, offs, within // n_picks, within % n_picks, w.reshape(-1)[order]


def bwd_dkv(q, k, v, do, lse, delta, idx, w, *, seq_len, head_dim, rows, keys, warps, interpret):
  """dk, dv of the whole memory [B, M, Sp, KH, Dp], summed over every pick of each chunk.

  Reverse map, not atomics: one program per (kv head, memory chunk, tile of ``keys`` keys) visits
  exactly that chunk's picks (``reverse_map``), keeps its dk/dv tile in float32 registers and
  writes it once, in the memory dtype; a chunk nobody picked gets exact zeros. Atomics would need float32 dk/dv buffers of the
  whole memory updated by K*C/M (8 at the paper shape) read-modify-writes per element, too large
  for L2, plus a cast pass, and a run-to-run varying summation order.
  """
  b, c, qp, h, dp = q.shape
  n_mem, kh = k.shape[1], k.shape[3]
  arrays = (*reverse_map(idx, w, n_mem), q, k, v, do, lse, delta)
  whole = [pl.BlockSpec(x.shape, lambda *_, n=x.ndim: (0,) * n) for x in arrays]
  kernel = functools.partial(_dkv_kernel, n_mem=n_mem, group=h // kh, rows=rows, keys=keys,
                             seq_len=seq_len, scale=head_dim ** -0.5)
  return _launch(kernel, _grids(q, k, rows, keys)["dkv"], whole, [whole[6], whole[7]],
                 [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                 warps=warps, stages=1, interpret=interpret, name="gca_gpu_dkv")(*arrays)
