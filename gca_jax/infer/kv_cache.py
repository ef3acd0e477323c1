"""Sliding-window attention over a rolling cache of the last ``window`` keys/values.

A step processes ``L`` new positions ``pos0 .. pos0+L-1`` given the K/V of the ``window``
positions before them (slot j holds position ``pos0 - window + j``; slots before position 0
are masked). Queries go in blocks of ``block`` positions, each against the ``(nbw+1)*block``
keys its window can reach: O(L * (window + block)) work, the cache is O(window) per layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from gca_jax.model.layers import alibi_slopes

_NEG = -1e30


def cached_window_attention(
    q: Float[Array, "B L H D"],
    k: Float[Array, "B L KH D"],
    v: Float[Array, "B L KH D"],
    k_cache: Float[Array, "B W KH D"],
    v_cache: Float[Array, "B W KH D"],
    pos0: Int[Array, ""],
    *,
    window: int,
    slopes: np.ndarray | None,
    block: int,
) -> Float[Array, "B L H D"]:
  """Causal attention of each new position i over keys i-window..i (cache + new), ALiBi."""
  b, length, h, d = q.shape
  kh, w = k.shape[2], k_cache.shape[1]
  if length % block:
    raise ValueError(f"cached_window_attention: length {length} is not a multiple of block {block}")
  nq = length // block
  nbw = -(-w // block)
  wp = nbw * block
  pad = jnp.zeros((b, wp - w, kh, d), k.dtype)
  k_all = jnp.concatenate([pad, k_cache.astype(k.dtype), k], 1).reshape(b, nbw + nq, block, kh, d)
  v_all = jnp.concatenate([pad, v_cache.astype(v.dtype), v], 1).reshape(b, nbw + nq, block, kh, d)
  nk = (nbw + 1) * block
  kw = jnp.stack([k_all[:, t:t + nq] for t in range(nbw + 1)], 2).reshape(b, nq, nk, kh, d)
  vw = jnp.stack([v_all[:, t:t + nq] for t in range(nbw + 1)], 2).reshape(b, nq, nk, kh, d)
  t_idx, r_idx = np.divmod(np.arange(nk), block)
  dist = np.arange(block)[:, None] + (nbw - t_idx)[None, :] * block - r_idx[None, :]  # block, nk
  in_window = (dist >= 0) & (dist <= window)
  kpos = pos0 - wp + (jnp.arange(nq)[:, None] + t_idx[None, :]) * block + r_idx[None, :]  # nq, nk
  mask = jnp.asarray(in_window)[None] & (kpos >= 0)[:, None, :]  # nq, block, nk
  qb = q.reshape(b, nq, block, kh, h // kh, d)
  s = jnp.einsum("bjmhgd,bjnhd->bjhgmn", qb, kw, preferred_element_type=jnp.float32) * (d ** -0.5)
  if slopes is not None:
    bias = -np.asarray(slopes, np.float32).reshape(kh, h // kh)[:, :, None, None] * dist.astype(np.float32)
    s = s + bias[None, None]
  s = jnp.where(mask[None, :, None, None], s, _NEG)
  p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
  o = jnp.einsum("bjhgmn,bjnhd->bjmhgd", p, vw, preferred_element_type=jnp.float32)
  return o.reshape(b, length, h, d).astype(q.dtype)


def roll_cache(cache: Float[Array, "B W KH D"], new: Float[Array, "B L KH D"],
               n_valid: Int[Array, ""]) -> Float[Array, "B W KH D"]:
  """The ``window`` positions ending at the ``n_valid``-th new one (later ones are padding)."""
  w = cache.shape[1]
  both = jnp.concatenate([cache, new.astype(cache.dtype)], 1)
  return jax.lax.dynamic_slice_in_dim(both, n_valid, w, axis=1)


def attention_step(attn, x: Float[Array, "B L D"], cache, pos0, n_valid, block: int):
  """A ``SelfAttention(kind="window")`` module applied to new positions with its cache.

  Returns (output [B, L, D], new cache (k, v) [B, W, KH, Dh])."""
  b, length, _ = x.shape
  q = attn.q(x).reshape(b, length, attn.num_heads, attn.head_dim)
  k = attn.k(x).reshape(b, length, attn.num_kv_heads, attn.head_dim)
  v = attn.v(x).reshape(b, length, attn.num_kv_heads, attn.head_dim)
  k_cache, v_cache = cache
  o = cached_window_attention(q, k, v, k_cache, v_cache, pos0, window=attn.window,
                              slopes=alibi_slopes(attn.num_heads), block=block)
  out = attn.o(o.reshape(b, length, attn.num_heads * attn.head_dim))
  return out, (roll_cache(k_cache, k, n_valid), roll_cache(v_cache, v, n_valid))


def decoder_layer_step(layer, h, cache, pos0, n_valid, block: int):
  """A pre-norm ``DecoderLayer`` (window kind) over new positions with its cache."""
  a, cache = attention_step(layer.attn, layer.attn_norm(h), cache, pos0, n_valid, block)
  h = h + a
  return h + layer.mlp(layer.mlp_norm(h)), cache


def empty_cache(batch: int, window: int, kv_heads: int, head_dim: int, dtype) -> tuple:
  """Zeros for the (k, v) cache of one layer; slots before position 0 are masked anyway."""
  z = jnp.zeros((batch, window, kv_heads, head_dim), dtype)
  return (z, z)
