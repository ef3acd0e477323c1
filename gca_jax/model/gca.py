"""The GCA layer (method-spec §3.7) and the upper decoder layer with the bypass residual (§3.6)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from gca_jax.config import ModelConfig
from gca_jax.model.attention import SelfAttention
from gca_jax.model.layers import RMSNorm, SwiGLU, linear
from gca_jax.model.sharding import active_mesh
from pallas_kernels.gca import gca_attention, gca_attention_sharded


class ChunkMemory(nnx.Module):
  """Shared chunk K/V projections of the encoder output (one memory for every upper layer)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.k = linear(cfg, cfg.d_model, cfg.num_kv_heads * cfg.head_dim, rngs)
    self.v = linear(cfg, cfg.d_model, cfg.num_kv_heads * cfg.head_dim, rngs)

  def __call__(self, enc):
    """enc [B, C, P, D] -> k_mem, v_mem [B, C, S, KH, Dh] over the S real tokens (the landmark
    slot is dropped; softmax_one supplies what the authors' zeroed slot did)."""
    cfg = self.cfg
    x = enc[:, :, : cfg.chunk_size]
    shape = (*x.shape[:3], cfg.num_kv_heads, cfg.head_dim)
    return self.k(x).reshape(shape), self.v(x).reshape(shape)


class GroupedCrossAttention(nnx.Module):
  """Every position of chunk c attends to each chunk picked for it; results mixed by weight."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.q = linear(cfg, cfg.d_model, cfg.num_heads * cfg.head_dim, rngs)
    self.o = linear(cfg, cfg.num_heads * cfg.head_dim, cfg.d_model, rngs)

  def __call__(self, h, k_mem, v_mem, idx, w):
    """h [B, C*P, D]; idx, w [B, C-1, K] serve chunks 1..C-1; chunk 0 gets zeros."""
    cfg = self.cfg
    b, n, _ = h.shape
    p = cfg.chunk_positions
    c = n // p
    q = self.q(self.norm(h)).reshape(b, c, p, cfg.num_heads, cfg.head_dim)
    kw = dict(softmax_one=cfg.softmax_one, impl=cfg.gca_impl, interpret=cfg.gca_interpret)
    mesh = active_mesh()
    if mesh is None or cfg.gca_impl == "xla":
      o = gca_attention(q[:, 1:], k_mem, v_mem, idx, w, **kw)
    else:  # a Mosaic call cannot be partitioned by XLA: run it per shard
      o = gca_attention_sharded(q[:, 1:], k_mem, v_mem, idx, w, mesh=mesh, **kw)
    o = jnp.concatenate([jnp.zeros_like(q[:, :1]), o.astype(q.dtype)], axis=1)
    return self.o(o.reshape(b, n, cfg.num_heads * cfg.head_dim))


class DecoderLayer(nnx.Module):
  """Pre-norm self-attention + SwiGLU."""

  def __init__(self, cfg: ModelConfig, kind: str, rngs: nnx.Rngs, eps: float | None = None):
    eps = cfg.norm_eps if eps is None else eps
    self.attn_norm = RMSNorm(cfg.d_model, eps, cfg)
    self.attn = SelfAttention(cfg, kind, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, eps, cfg)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, h):
    h = h + self.attn(self.attn_norm(h))
    return h + self.mlp(self.mlp_norm(h))


class UpperLayer(nnx.Module):
  """Sliding-window attention, then GCA, then the MLP.

  With ``bypass_residual`` (the authors' choice) the GCA output only feeds this layer's MLP
  input: out = h1 + MLP(norm(h1 + g)); otherwise it also enters the residual stream.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.bypass = cfg.bypass_residual
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.attn = SelfAttention(cfg, "window", rngs)
    self.gca = GroupedCrossAttention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, h, k_mem, v_mem, idx, w):
    h1 = h + self.attn(self.attn_norm(h))
    mixed = h1 + self.gca(h1, k_mem, v_mem, idx, w)
    return (h1 if self.bypass else mixed) + self.mlp(self.mlp_norm(mixed))
