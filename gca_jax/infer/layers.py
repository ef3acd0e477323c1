"""Upper-layer and GCA steps on pre-gathered chunks, built from the model's own submodules.

Unlike ``GroupedCrossAttention.__call__`` (which zeroes chunk 0 of its input), every chunk of a
segment gets its GCA from the picks it is given: the first chunk of a segment uses the pick
carried from the previous segment's last landmark (fixes the authors' B5).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from gca_jax.infer.kv_cache import attention_step
from pallas_kernels.gca import gca_attention


def gca_step(gca, h1: Float[Array, "B L D"], k_g: Float[Array, "B n K S KH Dh"],
             v_g: Float[Array, "B n K S KH Dh"], w: Float[Array, "B n K"]) -> Float[Array, "B L D"]:
  """GCA of ``n`` query chunks (``L / n`` positions each) over their gathered picks."""
  cfg = gca.cfg
  b, length, _ = h1.shape
  n, k = k_g.shape[1], k_g.shape[2]
  q = gca.q(gca.norm(h1)).reshape(b, n, length // n, cfg.num_heads, cfg.head_dim)
  k_mem = k_g.reshape(b, n * k, *k_g.shape[3:])
  v_mem = v_g.reshape(b, n * k, *v_g.shape[3:])
  idx = jnp.broadcast_to(jnp.arange(n * k, dtype=jnp.int32).reshape(1, n, k), (b, n, k))
  o = gca_attention(q, k_mem, v_mem, idx, w, softmax_one=cfg.softmax_one, impl=cfg.gca_impl,
                    interpret=cfg.gca_interpret)
  return gca.o(o.astype(h1.dtype).reshape(b, length, cfg.num_heads * cfg.head_dim))


def upper_layer_step(layer, h, cache, k_g, v_g, w, pos0, n_valid, block: int):
  """``UpperLayer``: window attention with its cache, GCA, MLP (bypass residual as configured)."""
  a, cache = attention_step(layer.attn, layer.attn_norm(h), cache, pos0, n_valid, block)
  h1 = h + a
  mixed = h1 + gca_step(layer.gca, h1, k_g, v_g, w)
  return (h1 if layer.bypass else mixed) + layer.mlp(layer.mlp_norm(mixed)), cache
