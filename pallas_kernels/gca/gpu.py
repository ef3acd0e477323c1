"""The Pallas GPU kernel of GCA on public-layout arrays: pad, run the custom_vjp, slice.

Backend: Triton (``jax.experimental.pallas.triton``), not Mosaic GPU. Measured with jax 0.10.2
on a CPU-only host:

* Triton kernels run in interpret mode (``interpret=True``) and so are checked against the
  float64 oracle here, forward and all gradients (tests/test_gca_kernel_gpu.py); a gathered load
  ``k_ref[idx_ref[i]]`` both interprets and lowers. Mosaic GPU's interpreter
  (``InterpretGPUParams``) refuses any non-trivial BlockSpec window, and a toy gather
  (``copy_gmem_to_smem`` of ``k_ref.at[idx]`` + barrier) fails in it ("nan + barrier") and, with
  plain ``interpret=True``, has no discharge rule for ``copy_gmem_to_smem``: a Mosaic GPU kernel
  could not be proven correct from this host.
* Both lower for CUDA under ``jax.export``: this kernel to ``__gpu$xla.gpu.triton``, the Mosaic
  GPU gather toy to ``mosaic_gpu_v2`` (once its SMEM copies are whole multiples of a 128-thread
  warpgroup's bytes). But Mosaic GPU in jax 0.10 needs Hopper or newer (wgmma/TMA), and its
  kernels are warpgroup programs with explicit barriers, much more code for the same math;
  Triton also runs on Ampere.

When the pin moves to JAX 0.11: its changelog deprecates the Pallas Triton backend (to be
removed later; the advice is Mosaic GPU, or jax_triton to keep Triton kernels). The kernel keeps
working while deprecated; before the removal, port ``gpu_kernels.py`` to Mosaic GPU, whose newer
releases add a pre-Hopper (cp.async) path: the design (whole chunk per step, per-pick lse and
delta, reverse-map dk/dv) carries over, and ``tests/test_gca_kernel_gpu.py`` and
``tests/test_cuda_export.py`` are the port's acceptance tests (the export test names the custom
call to expect).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.gca import gpu_kernels
from pallas_kernels.gca.gpu_block_sizes import GpuBlockSizes, default_gpu_block_sizes
from pallas_kernels.gca.gpu_cost import cost_model, padded_dims
from pallas_kernels.gca.remat import tag_saved

GPU_KERNEL_AVAILABLE = True
CUSTOM_CALL = "__gpu$xla.gpu.triton"  # what the kernel lowers to for CUDA
__all__ = ["CUSTOM_CALL", "GpuBlockSizes", "cost_model", "gca_gpu", "make_gpu_kernel"]


def make_gpu_kernel(*, seq_len: int, head_dim: int, softmax_one: bool, block_sizes: GpuBlockSizes,
                    rows: int, interpret: bool):
  """Returns ``f(q, k, v, idx, w) -> out`` on padded public-layout arrays, with exact gradients in
  q, k, v and w. Residuals: the inputs and the per-pick lse; no per-pick output is stored.

  dW[b, c, i] = sum over heads and rows of <dO, o_i>: the dq kernel emits that per-row delta of
  every pick, so dW is one XLA reduction of it (pad rows have dO = 0 and add nothing).
  """
  common = dict(seq_len=seq_len, head_dim=head_dim, rows=rows, interpret=interpret)
  launch = dict(warps=block_sizes.num_warps, stages=block_sizes.num_stages)

  def forward(q, k, v, idx, w):
    return gpu_kernels.fwd(q, k, v, idx, w, softmax_one=softmax_one, **common, **launch)

  def forward_with_residuals(q, k, v, idx, w):
    out, lse = tag_saved(*forward(q, k, v, idx, w))  # kept by a save_gca remat policy
    return out, (q, k, v, idx, w, lse)

  def backward(res, do):
    q, k, v, idx, w, lse = res
    dq, delta = gpu_kernels.bwd_dq(q, k, v, idx, w, do, lse, **common, **launch)
    dk, dv = gpu_kernels.bwd_dkv(q, k, v, do, lse, delta, idx, w, **common,
                                 keys=block_sizes.keys(k.shape[2]),
                                 warps=block_sizes.dkv_warps(k.shape[2], k.shape[4]))
    dw = jnp.sum(delta, axis=(2, 4))  # over query heads and rows
    return dq, dk, dv, np.zeros(idx.shape, jax.dtypes.float0), dw.astype(w.dtype)

  gca = jax.custom_vjp(lambda q, k, v, idx, w: forward(q, k, v, idx, w)[0])
  gca.defvjp(forward_with_residuals, backward)
  return gca


def _device_kind() -> str | None:
  devices = jax.devices()
  return devices[0].device_kind if devices and devices[0].platform == "gpu" else None


def _with_overrides(sizes: GpuBlockSizes, overrides: dict) -> GpuBlockSizes:
  """``sizes`` with ``{field: value}`` overrides (``ExecutionConfig.gca_block_sizes``)."""
  fields = [f.name for f in dataclasses.fields(GpuBlockSizes)]
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f"gca_attention(platform='gpu'): block_sizes fields {unknown} do not exist; "
                     f"GpuBlockSizes has {fields}")
  return dataclasses.replace(sizes, **overrides)


def gca_gpu(q, k_mem, v_mem, idx, w, *, softmax_one: bool = False,
            block_sizes: GpuBlockSizes | dict | None = None, interpret=False):
  """GCA by the Triton kernel (``gpu_kernels.py``); same contract as ``gca_attention``.

  ``block_sizes``: a ``GpuBlockSizes``, a ``{field: value}`` dict over the chip's defaults, or None.

  ``interpret`` may be any truthy value (a TPU ``InterpretParams`` too): the kernel then runs in
  the generic Pallas interpreter, which is the one that understands Triton kernels.
  """
  if block_sizes is None or isinstance(block_sizes, dict):
    block_sizes = _with_overrides(default_gpu_block_sizes(None if interpret else _device_kind()),
                                  block_sizes or {})
  if not isinstance(block_sizes, GpuBlockSizes):
    raise TypeError(f"gca_attention(platform='gpu'): block_sizes must be a GpuBlockSizes "
                    f"(pallas_kernels.gca.gpu_block_sizes), got {type(block_sizes).__name__}")
  _, _, nq, _, d = q.shape
  s = k_mem.shape[2]
  rows, qp, sp, dp = padded_dims(nq, s, d, block_sizes)
  kernel = make_gpu_kernel(seq_len=s, head_dim=d, softmax_one=softmax_one,
                           block_sizes=block_sizes, rows=rows, interpret=bool(interpret))
  pad_q = ((0, 0), (0, 0), (0, qp - nq), (0, 0), (0, dp - d))
  pad_m = ((0, 0), (0, 0), (0, sp - s), (0, 0), (0, dp - d))
  out = kernel(jnp.pad(q, pad_q), jnp.pad(k_mem, pad_m), jnp.pad(v_mem, pad_m),
               idx.astype(jnp.int32), w.astype(jnp.float32))
  return out[:, :, :nq, :, :d]

