"""The Mosaic TPU kernels on public-layout arrays: resolve block sizes, pad, regroup heads, run."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from pallas_kernels.gca import layout
from pallas_kernels.gca.block_sizes import BlockSizes, check_vmem, default_block_sizes, generation
from pallas_kernels.gca.tpu import Dims
from pallas_kernels.gca.vjp import make_gca_kernel


def target_device_kind() -> str:
  """The device kind being compiled for: the mesh's (AOT for a TPU topology) or the host's."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return getattr(device, "device_kind", None) or jax.devices()[0].device_kind


def plan(q_shape, mem_shape, n_picks: int, itemsize: int,
         block_sizes: BlockSizes) -> tuple[Dims, BlockSizes]:
  """Kernel-layout sizes and the block sizes clamped to the shape, for public shapes
  q [B, C, Q, H, D] and memory [B, M, S, KH, D] (``benchmarks/gca_kernel_model.py`` uses it too)."""
  b, c, nq, h, d = q_shape
  m, s, kh = mem_shape[1], mem_shape[2], mem_shape[3]
  bkh = block_sizes.block_kh or kh
  if kh % bkh:
    raise ValueError(f"BlockSizes.block_kh={bkh} must divide the number of kv heads KH={kh}")
  bs = dataclasses.replace(block_sizes, block_c_fwd=min(block_sizes.block_c_fwd, c),
                           block_c_dq=min(block_sizes.block_c_dq, c),
                           block_m_dkv=min(block_sizes.block_m_dkv, m), block_kh=bkh)
  align = bs.row_align
  dims = Dims(b=b, c=c, cp=layout.round_up(c, math.lcm(bs.block_c_fwd, bs.block_c_dq)), kh=kh,
              r=(h // kh) * layout.round_up(nq, align), d=d,
              mp=layout.round_up(m, bs.block_m_dkv), sp=layout.round_up(s, align), k=n_picks,
              itemsize=itemsize)
  return dims, bs


def gca_tpu(q, k_mem, v_mem, idx, w, *, softmax_one: bool = False,
            block_sizes: BlockSizes | None = None, interpret=False):
  """GCA by the Mosaic TPU kernels (``tpu.py``); same contract as ``gca_attention``."""
  b, c, nq, h, d = q.shape
  s, kh = k_mem.shape[2], k_mem.shape[3]
  kind = None if interpret else target_device_kind()
  if block_sizes is None:
    block_sizes = default_block_sizes(kind)
  dims, bs = plan(q.shape, k_mem.shape, idx.shape[2], q.dtype.itemsize, block_sizes)
  check_vmem(dims, bs, generation(kind))
  kernel = make_gca_kernel(seq_len=s, n_chunks=c, softmax_one=softmax_one, block_sizes=bs,
                           interpret=interpret)
  idx_p, w_p = layout.pad_picks(idx.astype(jnp.int32), w.astype(jnp.float32), dims.cp)
  qp = dims.r // (h // kh)
  out = kernel(layout.q_to_kernel(q, kh, qp, dims.cp),
               layout.mem_to_kernel(k_mem, dims.sp, dims.mp),
               layout.mem_to_kernel(v_mem, dims.sp, dims.mp), idx_p, w_p)
  return layout.q_from_kernel(out, c, nq, h).astype(q.dtype)
