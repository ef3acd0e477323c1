"""Rolling caches of the last ``window`` positions' keys/values, one per self-attention layer.

The attention itself is the model's (``sliding_window_attention`` with ``cache=``, reached
through each layer's ``step``); this module only keeps the caches: slot j of a cache holds
position ``pos - window + j``, where ``pos`` is the next position to process.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def roll_cache(cache: Float[Array, "B W KH D"], new: Float[Array, "B L KH D"],
               n_valid: Int[Array, ""]) -> Float[Array, "B W KH D"]:
  """The ``window`` positions ending at the ``n_valid``-th new one (later ones are padding)."""
  w = cache.shape[1]
  both = jnp.concatenate([cache, new.astype(cache.dtype)], 1)
  return jax.lax.dynamic_slice_in_dim(both, n_valid, w, axis=1)


def roll(cache: tuple, kv: tuple, n_valid) -> tuple:
  """Both caches (k, v) of a layer advanced by its new positions' ``kv``."""
  return roll_cache(cache[0], kv[0], n_valid), roll_cache(cache[1], kv[1], n_valid)


def empty_cache(batch: int, window: int, kv_heads: int, head_dim: int, dtype) -> tuple:
  """Zeros for the (k, v) cache of one layer; slots before position 0 are masked anyway."""
  z = jnp.zeros((batch, window, kv_heads, head_dim), dtype)
  return (z, z)
