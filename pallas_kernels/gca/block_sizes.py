"""Block sizes of the fused GCA kernel, with per-TPU-generation defaults.

The kernel keeps one whole memory chunk (S keys, padded) in VMEM per grid step, so the only free
tile choices are how many query chunks share one query block and how far rows are padded. The
numbers below are starting points sized for VMEM (16 MiB scoped on v5e, 32 MiB on v4/v5p/v6e);
re-tune with ``benchmarks/gca_kernel.py`` on the real chip.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile choices of the fused kernel.

  Attributes:
    block_c: query chunks per query block (all G query heads of one kv head ride along). The
      output and its float32 accumulator stay resident in VMEM across the block's K picks.
    row_align: query positions and chunk keys are zero-padded to a multiple of this (a sublane
      tile: 8 rows of 32-bit, 16 of bf16); the pad is masked inside the kernel.
  """

  block_c: int = 1
  row_align: int = 16

  def __post_init__(self):
    if self.block_c < 1:
      raise ValueError(f"BlockSizes.block_c={self.block_c} must be >= 1")
    if self.row_align < 1 or self.row_align % 8:
      raise ValueError(f"BlockSizes.row_align={self.row_align} must be a positive multiple of 8")


# Smaller-VMEM v5e gets one query chunk per block; the 32 MiB-VMEM generations take two so that
# the query/output DMAs are larger. Keys: the chip names jax reports in `device_kind`.
_DEFAULTS: dict[str, BlockSizes] = {
    "v4": BlockSizes(block_c=2),
    "v5e": BlockSizes(block_c=1),
    "v5p": BlockSizes(block_c=2),
    "v6e": BlockSizes(block_c=2),
}


def default_block_sizes(device_kind: str | None = None) -> BlockSizes:
  """Default block sizes for a TPU ``device_kind`` (e.g. "TPU v5 lite"); generic otherwise."""
  kind = (device_kind or "").lower().replace(" ", "")
  if "v5lite" in kind or "v5e" in kind:
    return _DEFAULTS["v5e"]
  if "v5p" in kind or kind.endswith("v5"):
    return _DEFAULTS["v5p"]
  if "v6" in kind:
    return _DEFAULTS["v6e"]
  if "v4" in kind:
    return _DEFAULTS["v4"]
  return BlockSizes()
