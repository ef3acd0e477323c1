"""Moves between the public GCA layout and the kernel layout (pads, head grouping).

Public: q [B, C, Q, H, D], memory [B, M, S, KH, D]. Kernel (chunk-major, so one query chunk or
one memory chunk of all heads is a contiguous DMA): q [B, Cp, KH, G*Qp, D] (the G query heads of
one kv head stacked as rows, so a fetched chunk serves all of them) and memory [B, Mp, KH, Sp, D];
Qp and Sp are Q and S zero-padded to the sublane tile, Cp and Mp the chunk counts padded to the
kernels' block multiples. Plain jnp, so autodiff transposes these moves and the custom_vjp sees
kernel-layout arrays only.
"""

from __future__ import annotations

import jax.numpy as jnp


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def q_to_kernel(q, kh: int, qp: int, cp: int):
  """[B, C, Q, H, D] -> [B, Cp, KH, G*Qp, D], zero-padding queries to Qp and chunks to Cp."""
  b, c, nq, h, d = q.shape
  g = h // kh
  q = jnp.pad(q, ((0, 0), (0, cp - c), (0, qp - nq), (0, 0), (0, 0)))
  q = q.reshape(b, cp, qp, kh, g, d).transpose(0, 1, 3, 4, 2, 5)
  return q.reshape(b, cp, kh, g * qp, d)


def q_from_kernel(x, c: int, nq: int, h: int):
  """Inverse of ``q_to_kernel``: [B, Cp, KH, G*Qp, D] -> [B, C, Q, H, D]."""
  b, cp, kh, r, d = x.shape
  g = h // kh
  x = x.reshape(b, cp, kh, g, r // g, d).transpose(0, 1, 4, 2, 3, 5)
  return x.reshape(b, cp, r // g, h, d)[:, :c, :nq]


def mem_to_kernel(m, sp: int, mp: int):
  """[B, M, S, KH, D] -> [B, Mp, KH, Sp, D], zero-padding keys to Sp and chunks to Mp."""
  n, s = m.shape[1], m.shape[2]
  m = jnp.pad(m, ((0, 0), (0, mp - n), (0, sp - s), (0, 0), (0, 0)))
  return m.transpose(0, 1, 3, 2, 4)


def pad_picks(idx, w, cp: int):
  """Pads idx / w [B, C, K] to Cp chunks with pick 0 at weight 0 (pad chunks are sliced away)."""
  c = idx.shape[1]
  pad = ((0, 0), (0, cp - c), (0, 0))
  return jnp.pad(idx, pad), jnp.pad(w, pad)
