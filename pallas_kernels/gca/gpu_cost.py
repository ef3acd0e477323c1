"""Roofline inputs of the GPU kernel: grid steps, HBM bytes, flops and per-step overhead.

Modeled, not measured: bytes count each kernel's compulsory HBM traffic for its real grid
(``gpu_kernels.grids``) and padding, flops count the executed (padded) dot tiles. One assumption
about caches: the G query heads of a kv head are adjacent programs, so a gathered chunk is read
from HBM once per kv head, not once per query head (exact when G = 1, as at the paper shape).
"""

from __future__ import annotations

import math

from pallas_kernels.gca.gpu_block_sizes import GpuBlockSizes
from pallas_kernels.gca.gpu_kernels import grids
from pallas_kernels.gca.layout import round_up

# Per-step overhead. GPU programs run concurrently, so a grid step costs no fixed sequential
# time as on TPU; what is exposed is one wave's start: each program begins with two dependent HBM
# round trips (its pick id, then the chunk that id names) that software pipelining cannot hide
# across programs, ~0.5 us each on H100/H200. A wave is 132 SMs x 4 resident programs (4 warps at
# <= 128 registers a thread). Amortised per grid step: 1 us / 528 ~ 1.9 ns. Each kernel launch
# adds ~3 us (launch latency plus the tail of the last wave).
WAVE_S = 1.0e-6
SMS = 132
RESIDENT_PER_SM = 4
PER_STEP_S = WAVE_S / (SMS * RESIDENT_PER_SM)
LAUNCH_S = 3.0e-6
KEYS = ("batch", "n_chunks", "q_len", "seq", "heads", "kv_heads", "head_dim", "top_k", "n_mem",
        "dtype_bytes")


def _pow2_at_least(n: int, floor: int = 16) -> int:
  return max(floor, 1 << (n - 1).bit_length())


def padded_dims(q_len: int, seq: int, head_dim: int, block_sizes: GpuBlockSizes):
  """(rows, Qp, Sp, Dp): the row tile and the padded query, key and head dims the kernel runs."""
  rows = block_sizes.rows(q_len)
  return rows, round_up(q_len, rows), _pow2_at_least(seq), _pow2_at_least(head_dim)


def _check(shape: dict) -> None:
  missing = [k for k in KEYS if k not in shape]
  if missing:
    raise ValueError(f"cost_model: shape lacks {missing}; it needs all of {KEYS}")


def _passes(shape: dict, block_sizes: GpuBlockSizes) -> dict[str, dict]:
  """grid_steps / bytes / flops of each launch: pad, fwd, dq, dkv, dw."""
  b, c, nq, s, h, kh, d, k, m, e = (shape[key] for key in KEYS)
  rows, qp, sp, dp = padded_dims(nq, s, d, block_sizes)
  tiles_k = sp // block_sizes.keys(sp)  # the dk/dv pass re-reads q, dO and stats per key tile
  grid = grids(batch=b, n_chunks=c, q_pad=qp, heads=h, kv_heads=kh, n_mem=m, rows=rows, s_pad=sp,
               keys=block_sizes.keys(sp))
  q_bytes = b * c * qp * h * dp * e  # q, dO, out or dq, padded
  mem_bytes = b * m * sp * kh * dp * e  # k or v, padded
  stats = b * c * h * k * qp * 4  # lse or delta
  picks = b * c * k * 8  # idx + w
  gather = 2 * b * c * k * kh * sp * dp * e  # the picked chunks of k and v, once per kv head
  tiles = b * c * h * k * qp * sp * dp * 2  # flops of one [Qp, Sp, Dp] dot per pick and head
  pad = 0
  if (qp, dp) != (nq, d):  # pad q, slice out (and the same for dO / dq in the backward)
    pad += 2 * (b * c * nq * h * d * e + q_bytes)
  if (sp, dp) != (s, d):
    pad += 2 * (b * m * s * kh * d * e + mem_bytes)
  n_rev = b * c * k
  return {
      "pad": {"grid_steps": 0, "bytes": pad, "flops": 0, "launches": 0},
      "fwd": {"grid_steps": math.prod(grid["fwd"]), "bytes": 2 * q_bytes + stats + picks + gather,
              "flops": 2 * tiles, "launches": 1},
      "dq": {"grid_steps": math.prod(grid["dq"]),
             "bytes": 3 * q_bytes + 2 * stats + picks + gather, "flops": 3 * tiles, "launches": 1},
      # k, v read and dk, dv written once per chunk; q, dO and the two stat rows re-read per pick.
      "dkv": {"grid_steps": math.prod(grid["dkv"]),
              "bytes": 4 * mem_bytes + tiles_k * (k * 2 * q_bytes + 2 * stats) + n_rev * 4 * 4,
              "flops": 4 * tiles, "launches": 1},
      "dw": {"grid_steps": 0, "bytes": stats + b * c * k * 4, "flops": b * c * h * k * qp,
             "launches": 1},
  }


def cost_model(shape: dict, pass_: str, block_sizes: GpuBlockSizes | None = None) -> dict:
  """The GPU kernel's modeled cost for ``pass_`` "fwd" or "fwd+bwd" at ``shape``.

  shape: batch, n_chunks, q_len, seq, heads, kv_heads, head_dim, top_k, n_mem, dtype_bytes.
  Returns grid_steps, bytes (HBM), flops, per_step_s (amortised per grid step, see
  ``PER_STEP_S``), launches and launch_s (per kernel launch), and the per-launch breakdown.
  A roofline time is max(bytes / bandwidth, flops / peak) + grid_steps * per_step_s
  + launches * launch_s.
  """
  _check(shape)
  if pass_ not in ("fwd", "fwd+bwd"):
    raise ValueError(f"cost_model: pass_={pass_!r}; use 'fwd' or 'fwd+bwd'")
  parts = _passes(shape, block_sizes or GpuBlockSizes())
  names = ("pad", "fwd") if pass_ == "fwd" else ("pad", "fwd", "dq", "dkv", "dw")
  if pass_ == "fwd":  # the forward alone pads only q / k / v, not dO
    parts["pad"] = dict(parts["pad"], bytes=parts["pad"]["bytes"] // 2)
  total = {key: sum(parts[n][key] for n in names) for key in ("grid_steps", "bytes", "flops",
                                                              "launches")}
  return {**total, "per_step_s": PER_STEP_S, "launch_s": LAUNCH_S,
          "parts": {n: parts[n] for n in names}}

