"""Building blocks: RMSNorm, SwiGLU, projections, embeddings, RoPE and ALiBi."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from gca_jax.config import ModelConfig
from gca_jax.logical import axes

# The masking logit of every attention and retrieval score in the model: finite, so exp
# underflows to exactly 0 and no inf - inf appears.
MASK_VALUE = -1e30


def dtype_of(name: str):
  return jnp.dtype(name)


def linear(cfg: ModelConfig, d_in: int, d_out: int, rngs: nnx.Rngs,
           names: tuple[str, str]) -> nnx.Linear:
  """Bias-free projection with N(0, init_std) weights; ``names`` are the logical axes of its
  [d_in, d_out] kernel (``gca_jax.logical.RULES``)."""
  return nnx.Linear(
      d_in, d_out, use_bias=False, dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype),
      kernel_init=nnx.initializers.normal(cfg.init_std), kernel_metadata=axes(*names), rngs=rngs)


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learnable scale, computed in float32."""

  def __init__(self, dim: int, eps: float, cfg: ModelConfig):
    self.eps = eps
    self.dtype = dtype_of(cfg.dtype)
    self.scale = nnx.Param(jnp.ones((dim,), dtype_of(cfg.param_dtype)), **axes("embed"))

  def __call__(self, x: Float[Array, "... D"]) -> Float[Array, "... D"]:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class SwiGLU(nnx.Module):
  """LLaMA MLP: down(silu(gate(x)) * up(x)), no bias."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.gate = linear(cfg, cfg.d_model, cfg.mlp_dim, rngs, ("embed", "mlp"))
    self.up = linear(cfg, cfg.d_model, cfg.mlp_dim, rngs, ("embed", "mlp"))
    self.down = linear(cfg, cfg.mlp_dim, cfg.d_model, rngs, ("mlp", "embed"))

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class Embedding(nnx.Module):
  """Token embedding, tied to the LM head; the pad row starts at zero."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    table = nnx.initializers.normal(cfg.init_std)(
        rngs.params(), (cfg.vocab_size, cfg.d_model), dtype_of(cfg.param_dtype))
    self.table = nnx.Param(table.at[cfg.pad_id].set(0), **axes("vocab", "table_embed"))
    self.dtype = dtype_of(cfg.dtype)

  def __call__(self, ids):
    return jnp.take(self.table[...], ids, axis=0).astype(self.dtype)

  def attend(self, h) -> Float[Array, "... V"]:
    """Tied LM head: logits in float32."""
    return jnp.einsum("...d,vd->...v", h, self.table[...].astype(h.dtype),
                      preferred_element_type=jnp.float32)


def alibi_slopes(num_heads: int) -> np.ndarray:
  """ALiBi slopes 2^(-8(h+1)/H), h = 0..H-1."""
  return np.array([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], np.float32)


def rope(x: Float[Array, "... P H D"], theta: float) -> Float[Array, "... P H D"]:
  """Rotary embedding over positions 0..P-1, rotate-half (first half / second half) style."""
  p, d = x.shape[-3], x.shape[-1]
  freqs = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
  ang = np.arange(p, dtype=np.float64)[:, None] * freqs[None, :]  # P, D/2
  cos = np.concatenate([np.cos(ang), np.cos(ang)], -1).astype(np.float32)[:, None, :]
  sin = np.concatenate([np.sin(ang), np.sin(ang)], -1).astype(np.float32)[:, None, :]
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x32 * cos + rotated * sin).astype(x.dtype)
