"""Block sizes of the Mosaic TPU GCA kernels, per-generation defaults and their VMEM footprint.

A grid step of the forward / dq kernel owns a block of query chunks with all their picks, a step
of the dk/dv kernel a block of memory chunks with all picks of them (``tpu.py``). Larger blocks
mean fewer steps (each costs ~0.35 us) and larger DMAs, bounded by VMEM: the defaults keep every
kernel inside the scoped VMEM limit libtpu enforces per generation (16 MiB on v5e and v5p,
32 MiB on v6e) at the paper's shape (12 kv heads, Q = S = D = 64, bf16); ``vmem_bytes`` gives
the footprint for any shape. Proven by AOT compiles (``benchmarks/gca_kernel_aot.py``), to be re-tuned on chip.
"""

from __future__ import annotations

import dataclasses

from pallas_kernels.gca.tpu import Dims


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile choices of the TPU kernels.

  Attributes:
    block_c_fwd: query chunks per forward grid step (each with all of its K picks).
    block_c_dq: query chunks per dq grid step.
    block_m_dkv: memory chunks per dk/dv grid step (with every pick of them).
    block_kh: kv heads per grid step (the G query heads of each ride along as rows); None: all.
    row_align: query positions and chunk keys are zero-padded to a multiple of this (a sublane
      tile: 8 rows of 32-bit, 16 of bf16); the pad is masked inside the kernel.
  """

  block_c_fwd: int = 8
  block_c_dq: int = 8
  block_m_dkv: int = 4
  block_kh: int | None = None
  row_align: int = 16

  def __post_init__(self):
    for name in ("block_c_fwd", "block_c_dq", "block_m_dkv"):
      if getattr(self, name) < 1:
        raise ValueError(f"BlockSizes.{name}={getattr(self, name)} must be >= 1")
    if self.block_kh is not None and self.block_kh < 1:
      raise ValueError(f"BlockSizes.block_kh={self.block_kh} must be >= 1 or None (all heads)")
    if self.row_align < 1 or self.row_align % 8:
      raise ValueError(f"BlockSizes.row_align={self.row_align} must be a positive multiple of 8")


# Keys: generations; see default_block_sizes for the device_kind strings jax reports.
_DEFAULTS: dict[str, BlockSizes] = {
    "v4": BlockSizes(block_c_fwd=8, block_c_dq=8, block_m_dkv=4),
    "v5e": BlockSizes(block_c_fwd=8, block_c_dq=8, block_m_dkv=4),
    "v5p": BlockSizes(block_c_fwd=8, block_c_dq=8, block_m_dkv=4),
    "v6e": BlockSizes(block_c_fwd=16, block_c_dq=16, block_m_dkv=8),
}
# Scoped VMEM limit of each generation, as libtpu's AOT compiler enforces it (what a kernel may
# use without raising vmem_limit_bytes): v5p's is 16 MiB too, not the 32 MiB of v6e.
SCOPED_VMEM = {"v4": 16 << 20, "v5e": 16 << 20, "v5p": 16 << 20, "v6e": 32 << 20}


def generation(device_kind: str | None) -> str | None:
  """"v4", "v5e", "v5p", "v6e" for a TPU ``device_kind`` (e.g. "TPU v5 lite"); None otherwise."""
  kind = (device_kind or "").lower().replace(" ", "")
  if "v5lite" in kind or "v5e" in kind:
    return "v5e"
  if "v5p" in kind or kind.endswith("v5"):
    return "v5p"
  if "v6" in kind:
    return "v6e"
  if "v4" in kind:
    return "v4"
  return None


def default_block_sizes(device_kind: str | None = None) -> BlockSizes:
  """Default block sizes for a TPU ``device_kind``; the generic (v5e-sized) ones otherwise."""
  return _DEFAULTS.get(generation(device_kind), BlockSizes())


def _tile(shape, itemsize: int) -> int:
  """Bytes of a VMEM array: the last two dims padded to the (sublane, 128-lane) tile."""
  *lead, rows, lanes = shape
  sub = 8 * 4 // itemsize
  n = -(-rows // sub) * sub * (-(-lanes // 128) * 128) * itemsize
  for x in lead:
    n *= x
  return n


def vmem_bytes(pass_: str, dims: Dims, block: int, block_kh: int) -> int:
  """VMEM of one grid step of ``pass_`` ("fwd", "dq", "dkv") with ``block`` query (memory)
  chunks and ``block_kh`` kv heads: pipelined blocks twice (double-buffered), scratch once."""
  isz, r, d, sp, k = dims.itemsize, dims.r, dims.d, dims.sp, dims.k
  rows = _tile((block, block_kh, r, d), isz)  # a q-shaped block
  acc_q = _tile((block, block_kh, r, d), 4)
  stat = _tile((block, k, block_kh, r), 4)
  w = _tile((block, 1, k), 4)
  slots = 2 * _tile((2, block_kh, sp, d), isz)  # k and v pick slots
  if pass_ == "fwd":
    return 2 * (2 * rows + stat + w) + slots + acc_q
  if pass_ == "dq":
    return 2 * (3 * rows + 2 * stat + w) + slots + acc_q
  if pass_ == "dkv":
    mem = _tile((block, block_kh, sp, d), isz)
    pick_rows = 2 * _tile((2, block_kh, r, d), isz) + 2 * _tile((2, block_kh, r), 4)
    return 2 * 4 * mem + 2 * _tile((block, block_kh, sp, d), 4) + pick_rows
  raise ValueError(f"unknown pass {pass_!r}; use 'fwd', 'dq' or 'dkv'")


def check_vmem(dims: Dims, bs: BlockSizes, gen: str | None) -> None:
  """Raises a ValueError naming the block size to shrink when a kernel's step would not fit the
  scoped VMEM limit of generation ``gen`` (no check for an unknown generation)."""
  limit = SCOPED_VMEM.get(gen)
  if limit is None:
    return
  for pass_, field in (("fwd", "block_c_fwd"), ("dq", "block_c_dq"), ("dkv", "block_m_dkv")):
    need = vmem_bytes(pass_, dims, getattr(bs, field), bs.block_kh)
    if need > limit:
      raise ValueError(
          f"BlockSizes.{field}={getattr(bs, field)} (block_kh={bs.block_kh}) needs "
          f"{need / 2**20:.1f} MiB of VMEM per {pass_} step, over the {limit >> 20} MiB scoped "
          f"limit of {gen}; use a smaller {field} or block_kh")
