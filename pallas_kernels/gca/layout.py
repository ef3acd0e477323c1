"""Moves between the public GCA layout and the kernel layout (pads, head grouping).

Public: q [B, C, Q, H, D], memory [B, M, S, KH, D]. Kernel: q [B, KH, C, G*Qp, D] (the G query
heads of one kv head stacked as rows, so a fetched chunk serves all of them) and memory
[B, KH, M, Sp, D]; Qp and Sp are Q and S zero-padded to the sublane tile. Plain jnp, so autodiff
transposes these moves and the custom_vjp sees kernel-layout arrays only.
"""

from __future__ import annotations

import jax.numpy as jnp


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def q_to_kernel(q, kh: int, qp: int, cp: int):
  """[B, C, Q, H, D] -> [B, KH, Cp, G*Qp, D], zero-padding queries to Qp and chunks to Cp."""
  b, c, nq, h, d = q.shape
  g = h // kh
  q = jnp.pad(q, ((0, 0), (0, cp - c), (0, qp - nq), (0, 0), (0, 0)))
  q = q.reshape(b, cp, qp, kh, g, d).transpose(0, 3, 1, 4, 2, 5)
  return q.reshape(b, kh, cp, g * qp, d)


def q_from_kernel(x, c: int, nq: int, h: int):
  """Inverse of ``q_to_kernel``: [B, KH, Cp, G*Qp, D] -> [B, C, Q, H, D]."""
  b, kh, cp, r, d = x.shape
  g = h // kh
  x = x.reshape(b, kh, cp, g, r // g, d).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, cp, r // g, h, d)[:, :c, :nq]


def mem_to_kernel(m, sp: int):
  """[B, M, S, KH, D] -> [B, KH, M, Sp, D], zero-padding keys to Sp."""
  s = m.shape[2]
  return jnp.pad(m, ((0, 0), (0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 3, 1, 2, 4)


def pad_picks(idx, w, cp: int):
  """Pads idx / w [B, C, K] to Cp chunks with pick 0 at weight 0 (pad chunks are sliced away)."""
  c = idx.shape[1]
  pad = ((0, 0), (0, cp - c), (0, 0))
  return jnp.pad(idx, pad), jnp.pad(w, pad)
