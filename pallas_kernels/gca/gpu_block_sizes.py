"""Tile choices of the Pallas Triton GCA kernel (``gpu_kernels.py``), with H100/H200 defaults.

One program holds a whole memory chunk (S keys padded to a power of two, as Triton needs) for
one query head and ``block_q`` query rows in the forward and dq kernels: DRT chunks are 64 keys, a
chunk fits in registers, and keeping it whole makes each pick's softmax (and its delta
<dO, o_i> in the backward) exact in one pass instead of needing an online rescale or a second
sweep. The dk/dv kernel may split a chunk's keys over programs (``dkv_block_k``): by then lse
and delta are known, so key tiles are independent and exact.
"""

from __future__ import annotations

import dataclasses


def _pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True)
class GpuBlockSizes:
  """Tile and launch choices of the GPU kernel.

  Attributes:
    block_q: query rows per program (a power of two, >= 16: the smallest Triton dot tile).
      Q is zero-padded to a multiple of it; Q smaller than it uses the next power of two >= Q.
    num_warps: warps per program of the forward and dq kernels.
    num_stages: software-pipelining depth of the pick loops (the gathered chunk loads of the next
      pick are issued while the current one is computed).
    dkv_block_k: keys of a memory chunk per dk/dv program (a power of two >= 16; chunks of
      fewer padded keys use all of them). Bounds the two float32 [keys, D] accumulators.
    dkv_num_warps: warps per program of the dk/dv kernel; None: 4 up to 64x64 accumulators (the
      paper's chunk), 8 above.
  """

  block_q: int = 64
  num_warps: int = 4
  num_stages: int = 2
  dkv_block_k: int = 64
  dkv_num_warps: int | None = None

  def __post_init__(self):
    for name in ("block_q", "dkv_block_k"):
      val = getattr(self, name)
      if not _pow2(val) or val < 16:
        raise ValueError(f"GpuBlockSizes.{name}={val} must be a power of two >= 16")
    for name in ("num_warps", "dkv_num_warps"):
      val = getattr(self, name)
      if val is not None and (not _pow2(val) or val > 32):
        raise ValueError(f"GpuBlockSizes.{name}={val} must be a power of two <= 32")
    if self.num_stages < 1:
      raise ValueError(f"GpuBlockSizes.num_stages={self.num_stages} must be >= 1")

  def rows(self, q_len: int) -> int:
    """The row tile actually used for ``q_len`` query positions."""
    return min(self.block_q, max(16, 1 << (q_len - 1).bit_length()))

  def keys(self, sp: int) -> int:
    """The dk/dv key tile actually used for chunks of ``sp`` (padded) keys."""
    return min(self.dkv_block_k, sp)

  def dkv_warps(self, sp: int, dp: int) -> int:
    if self.dkv_num_warps is not None:
      return self.dkv_num_warps
    return 4 if self.keys(sp) * dp <= 64 * 64 else 8


# Hopper (H100/H200, 228 KiB shared memory and 64K registers per SM) runs the 64-row tile with 4
# warps: 64x64 float32 logits are 32 registers a thread and a 64x64 bf16 chunk of k and of v is
# 16 KiB of shared memory, so several programs share an SM. Ampere (A100) has the same register
# file; its smaller shared memory is still plenty for two pipeline stages. Re-tune with
# ``benchmarks/gpu_check.py`` on the real chip.
_DEFAULTS = {
    "h100": GpuBlockSizes(block_q=64, num_warps=4, num_stages=2),
    "h200": GpuBlockSizes(block_q=64, num_warps=4, num_stages=2),
    "a100": GpuBlockSizes(block_q=64, num_warps=4, num_stages=2),
}


def default_gpu_block_sizes(device_kind: str | None = None) -> GpuBlockSizes:
  """Defaults for a CUDA ``device_kind`` (e.g. "NVIDIA H200"); the H100 ones otherwise."""
  kind = (device_kind or "").lower()
  for key, sizes in _DEFAULTS.items():
    if key in kind:
      return sizes
  return _DEFAULTS["h100"]
