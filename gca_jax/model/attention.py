"""Self-attention: blocked sliding-window causal, blocked full causal, in-chunk bidirectional.

Sliding-window attention is computed in query blocks of ``block`` positions, each against the
``(nb + 1) * block`` keys that can fall in its window: O(L * (window + block)) compute and
memory, never a dense L x L mask. Full causal attention maps over query blocks with remat, so
its memory is O(L * block) as well (its compute is quadratic by definition).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from gca_jax.config import ExecutionConfig, ModelConfig
from gca_jax.model.layers import MASK_VALUE, alibi_slopes, linear, rope

def auto_block(window: int, length: int) -> int:
  """A query block of about half the window, a multiple of 8, no longer than the sequence."""
  block = max(8, -(-((window + 1) // 2) // 8) * 8)
  return min(block, max(8, -(-length // 8) * 8))


def _group(q, num_kv_heads):
  *lead, h, d = q.shape
  return q.reshape(*lead, num_kv_heads, h // num_kv_heads, d)


def _softmax(scores, dtype):
  """Row softmax in float32 (every row keeps at least its own position), cast for the PV matmul."""
  return jax.nn.softmax(scores, axis=-1).astype(dtype)


def sliding_window_attention(
    q: Float[Array, "B L H D"],
    k: Float[Array, "B L KH D"],
    v: Float[Array, "B L KH D"],
    *,
    window: int,
    slopes: np.ndarray | None,
    block: int = 0,
    cache: tuple | None = None,
    pos0: int | Int[Array, ""] = 0,
) -> Float[Array, "B L H D"]:
  """Causal attention of query i over keys i-window..i, with optional ALiBi -slope*(i-j).

  Without ``cache`` the L positions are a whole sequence starting at position 0 (training).
  With ``cache = (k_cache, v_cache)`` [B, W, KH, D] (W >= window) they continue one from
  position ``pos0``: slot j of the cache holds position pos0 - W + j, and slots before position
  0 are masked (serving). Both are the same computation: the keys before the first query are a
  zero prefix (training) or the cache (serving).
  """
  b, length, h, d = q.shape
  kh = k.shape[2]
  bq = block or auto_block(window, length)
  nblk = -(-length // bq)
  lp = nblk * bq
  if cache is None:
    nb = min(-(-window // bq), nblk - 1)  # key blocks before a query block that it can reach
    prefix = [jnp.zeros((b, nb * bq, kh, d), k.dtype)] * 2
    pos0 = 0
  else:
    w = cache[0].shape[1]
    if w < window:
      raise ValueError(f"sliding_window_attention: a cache of {w} positions cannot hold a window of {window}")
    nb = -(-w // bq)
    pad = jnp.zeros((b, nb * bq - w, kh, d), k.dtype)
    prefix = [jnp.concatenate([pad, c.astype(k.dtype)], 1) for c in cache]
  tail = jnp.zeros((b, lp - length, kh, d), k.dtype)
  kp = jnp.concatenate([prefix[0], k, tail], 1).reshape(b, nb + nblk, bq, kh, d)
  vp = jnp.concatenate([prefix[1], v, tail], 1).reshape(b, nb + nblk, bq, kh, d)
  qb = _group(jnp.pad(q, [(0, 0), (0, lp - length), (0, 0), (0, 0)]), kh).reshape(b, nblk, bq, kh, h // kh, d)
  # Key window of query block j: key blocks j .. j+nb of the prefixed keys (j+nb is aligned with j).
  kw = jnp.stack([kp[:, t:t + nblk] for t in range(nb + 1)], axis=2).reshape(b, nblk, (nb + 1) * bq, kh, d)
  vw = jnp.stack([vp[:, t:t + nblk] for t in range(nb + 1)], axis=2).reshape(b, nblk, (nb + 1) * bq, kh, d)
  # Static layout: distance i - j for query row m and window slot (t, r).
  t_idx, r_idx = np.divmod(np.arange((nb + 1) * bq), bq)
  dist = np.arange(bq)[:, None] + (nb - t_idx)[None, :] * bq - r_idx[None, :]  # bq, (nb+1)bq
  in_window = (dist >= 0) & (dist <= window)
  # Absolute position of each window slot's key; negative: before the sequence (masked).
  xp = np if isinstance(pos0, int) else jnp
  kpos = pos0 - nb * bq + (xp.arange(nblk)[:, None] + t_idx[None, :]) * bq + r_idx[None, :]
  mask = in_window[None] & (kpos >= 0)[:, None, :]  # nblk, bq, (nb+1)bq
  s = jnp.einsum("bjmhgd,bjnhd->bjhgmn", qb, kw, preferred_element_type=jnp.float32) * (d ** -0.5)
  if slopes is not None:
    bias = -np.asarray(slopes, np.float32).reshape(kh, h // kh)[:, :, None, None] * dist.astype(np.float32)
    s = s + bias[None, None]
  s = jnp.where(mask[None, :, None, None], s, MASK_VALUE)
  p = _softmax(s, q.dtype)
  o = jnp.einsum("bjhgmn,bjnhd->bjmhgd", p, vw, preferred_element_type=jnp.float32)
  return o.reshape(b, lp, h, d)[:, :length].astype(q.dtype)


def full_causal_attention(
    q: Float[Array, "B L H D"],
    k: Float[Array, "B L KH D"],
    v: Float[Array, "B L KH D"],
    *,
    slopes: np.ndarray | None,
    block: int = 256,
) -> Float[Array, "B L H D"]:
  """Causal attention over all past keys, one query block at a time (memory O(L * block))."""
  b, length, h, d = q.shape
  kh = k.shape[2]
  bq = min(block, max(8, -(-length // 8) * 8))
  nblk = -(-length // bq)
  lp = nblk * bq
  pad = [(0, 0), (0, lp - length), (0, 0), (0, 0)]
  qb = _group(jnp.pad(q, pad), kh).reshape(b, nblk, bq, kh, h // kh, d)
  kp, vp = jnp.pad(k, pad), jnp.pad(v, pad)
  kpos = jnp.arange(lp)
  slope = None if slopes is None else jnp.asarray(slopes).reshape(kh, h // kh)[:, :, None, None]

  @jax.checkpoint
  def one_block(args):
    qj, j = args  # qj: B, bq, KH, G, D
    qpos = j * bq + jnp.arange(bq)
    s = jnp.einsum("bmhgd,bnhd->bhgmn", qj, kp, preferred_element_type=jnp.float32) * (d ** -0.5)
    dist = (qpos[:, None] - kpos[None, :]).astype(jnp.float32)
    if slope is not None:
      s = s - slope * dist
    s = jnp.where(dist >= 0, s, MASK_VALUE)
    p = _softmax(s, q.dtype)
    return jnp.einsum("bhgmn,bnhd->bmhgd", p, vp, preferred_element_type=jnp.float32)

  o = jax.lax.map(one_block, (jnp.moveaxis(qb, 1, 0), jnp.arange(nblk)))  # nblk, B, bq, KH, G, D
  return jnp.moveaxis(o, 0, 1).reshape(b, lp, h, d)[:, :length].astype(q.dtype)


def chunk_bidirectional_attention(
    q: Float[Array, "N P H D"], k: Float[Array, "N P KH D"], v: Float[Array, "N P KH D"]
) -> Float[Array, "N P H D"]:
  """Dense attention inside each chunk (no mask, no bias)."""
  n, p, h, d = q.shape
  kh = k.shape[2]
  qg = _group(q, kh)
  s = jnp.einsum("nmhgd,nshd->nhgms", qg, k, preferred_element_type=jnp.float32) * (d ** -0.5)
  w = jax.nn.softmax(s, axis=-1).astype(q.dtype)
  o = jnp.einsum("nhgms,nshd->nmhgd", w, v, preferred_element_type=jnp.float32)
  return o.reshape(n, p, h, d).astype(q.dtype)


class SelfAttention(nnx.Module):
  """Multi-head (GQA) self-attention; ``kind`` is "window", "full" (both ALiBi), "full_rope"
  (full causal, RoPE at absolute positions 0..L-1, no ALiBi) or "chunk" (RoPE encoder)."""

  def __init__(self, cfg: ModelConfig, kind: str, rngs: nnx.Rngs, run: ExecutionConfig):
    if kind not in ("window", "full", "full_rope", "chunk"):
      raise ValueError(f"SelfAttention kind={kind!r}: use 'window', 'full', 'full_rope' or 'chunk'")
    self.kind = kind
    self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.window, self.block, self.rope_theta = cfg.window, run.attn_block, cfg.rope_theta
    self.q = linear(cfg, cfg.d_model, cfg.num_heads * cfg.head_dim, rngs, ("embed", "heads"))
    self.k = linear(cfg, cfg.d_model, cfg.num_kv_heads * cfg.head_dim, rngs, ("embed", "kv_heads"))
    self.v = linear(cfg, cfg.d_model, cfg.num_kv_heads * cfg.head_dim, rngs, ("embed", "kv_heads"))
    self.o = linear(cfg, cfg.num_heads * cfg.head_dim, cfg.d_model, rngs, ("heads", "embed"))

  def __call__(self, x: Float[Array, "B L D"]) -> Float[Array, "B L D"]:
    return self.attend(x)[0]

  def attend(self, x: Float[Array, "B L D"], cache: tuple | None = None, pos0=0,
             block: int | None = None):
    """(output [B, L, D], (k, v) of the new positions [B, L, KH, Dh]).

    ``cache``/``pos0`` continue a sequence (window kind only; see ``sliding_window_attention``);
    ``block`` overrides the query block (serving steps use their own)."""
    *lead, _ = x.shape
    q = self.q(x).reshape(*lead, self.num_heads, self.head_dim)
    k = self.k(x).reshape(*lead, self.num_kv_heads, self.head_dim)
    v = self.v(x).reshape(*lead, self.num_kv_heads, self.head_dim)
    block = self.block if block is None else block
    slopes = alibi_slopes(self.num_heads)
    if cache is not None and self.kind != "window":
      raise ValueError(f"SelfAttention kind={self.kind!r} has no cache; only 'window' attention does")
    if self.kind == "window":
      o = sliding_window_attention(q, k, v, window=self.window, slopes=slopes, block=block,
                                   cache=cache, pos0=pos0)
    elif self.kind == "full":
      o = full_causal_attention(q, k, v, slopes=slopes, block=block or 256)
    elif self.kind == "full_rope":  # a whole sequence from position 0: rope's positions 0..L-1
      o = full_causal_attention(rope(q, self.rope_theta), rope(k, self.rope_theta), v, slopes=None,
                                block=block or 256)
    else:
      o = chunk_bidirectional_attention(rope(q, self.rope_theta), rope(k, self.rope_theta), v)
    return self.o(o.reshape(*lead, self.num_heads * self.head_dim)), (k, v)
