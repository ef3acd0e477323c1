"""The GCA layer, the decoder layers, and the upper decoder layer with the bypass residual.

Every layer here serves training and inference alike: ``step`` takes an optional rolling cache
of the window's keys/values (serving) and returns the new positions' keys/values beside the
output; ``__call__`` is the cache-free call used in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gca_jax.config import ExecutionConfig, ModelConfig
from gca_jax.logical import active_mesh
from gca_jax.model.attention import SelfAttention
from gca_jax.model.layers import RMSNorm, SwiGLU, linear
from pallas_kernels.gca import gca_attention, gca_attention_sharded


class ChunkMemory(nnx.Module):
  """Shared chunk K/V projections of the encoder output (one memory for every upper layer)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.k = linear(cfg, cfg.d_model, cfg.num_kv_heads * cfg.head_dim, rngs, ("embed", "kv_heads"))
    self.v = linear(cfg, cfg.d_model, cfg.num_kv_heads * cfg.head_dim, rngs, ("embed", "kv_heads"))

  def __call__(self, enc):
    """enc [B, C, P, D] -> k_mem, v_mem [B, C, S, KH, Dh] over the S real tokens (the landmark
    slot is dropped; softmax_one supplies what a zeroed landmark slot would)."""
    cfg = self.cfg
    x = enc[:, :, : cfg.chunk_size]
    shape = (*x.shape[:3], cfg.num_kv_heads, cfg.head_dim)
    return self.k(x).reshape(shape), self.v(x).reshape(shape)


class GroupedCrossAttention(nnx.Module):
  """Every position of a chunk attends to each chunk picked for it; results mixed by weight."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, run: ExecutionConfig):
    self.cfg = cfg
    self.run = run
    self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.q = linear(cfg, cfg.d_model, cfg.num_heads * cfg.head_dim, rngs, ("embed", "heads"))
    self.o = linear(cfg, cfg.num_heads * cfg.head_dim, cfg.d_model, rngs, ("heads", "embed"))

  def __call__(self, h, k_mem, v_mem, idx, w, *, unserved: int = 1):
    """GCA of the chunks of ``h`` [B, L, D] (L = n chunks x positions).

    ``idx``, ``w`` [B, n - unserved, K] are the picks of the last chunks; the first ``unserved``
    chunks have no picks (in training chunk 0: nothing before it) and get exactly zero.
    """
    cfg, run = self.cfg, self.run
    b, length, _ = h.shape
    n = idx.shape[1] + unserved
    q = self.q(self.norm(h)).reshape(b, n, length // n, cfg.num_heads, cfg.head_dim)
    kw = dict(softmax_one=cfg.softmax_one, impl=run.gca_impl, platform=run.gca_platform or None,
              interpret=run.gca_interpret, block_sizes=run.block_sizes() or None)
    mesh = active_mesh()
    if mesh is None or run.gca_impl == "xla":
      o = gca_attention(q[:, unserved:], k_mem, v_mem, idx, w, **kw)
    else:  # a Pallas call cannot be partitioned by XLA: run it per shard
      o = gca_attention_sharded(q[:, unserved:], k_mem, v_mem, idx, w, mesh=mesh, **kw)
    o = jnp.concatenate([jnp.zeros_like(q[:, :unserved]), o.astype(q.dtype)], axis=1)
    return self.o(o.reshape(b, length, cfg.num_heads * cfg.head_dim))


class DecoderLayer(nnx.Module):
  """Pre-norm self-attention + SwiGLU."""

  def __init__(self, cfg: ModelConfig, kind: str, rngs: nnx.Rngs, run: ExecutionConfig,
               eps: float | None = None):
    eps = cfg.norm_eps if eps is None else eps
    self.attn_norm = RMSNorm(cfg.d_model, eps, cfg)
    self.attn = SelfAttention(cfg, kind, rngs, run)
    self.mlp_norm = RMSNorm(cfg.d_model, eps, cfg)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, h):
    return self.step(h)[0]

  def step(self, h, cache=None, pos0=0, block=None):
    """(output, (k, v) of the new positions); ``cache``: see ``SelfAttention.attend``."""
    with jax.named_scope("attn"):
      a, kv = self.attn.attend(self.attn_norm(h), cache, pos0, block)
    h = h + a
    with jax.named_scope("mlp"):
      return h + self.mlp(self.mlp_norm(h)), kv


class UpperLayer(nnx.Module):
  """Sliding-window attention, then GCA, then the MLP.

  With ``bypass_residual`` (the authors' choice) the GCA output only feeds this layer's MLP
  input: out = h1 + MLP(norm(h1 + g)); otherwise it also enters the residual stream.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, run: ExecutionConfig):
    self.bypass = cfg.bypass_residual
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.attn = SelfAttention(cfg, "window", rngs, run)
    self.gca = GroupedCrossAttention(cfg, rngs, run)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.mlp = SwiGLU(cfg, rngs)

  def __call__(self, h, k_mem, v_mem, idx, w):
    return self.step(h, k_mem, v_mem, idx, w)[0]

  def step(self, h, k_mem, v_mem, idx, w, cache=None, pos0=0, block=None, unserved: int = 1):
    """(output, (k, v) of the new positions); picks as in ``GroupedCrossAttention``."""
    with jax.named_scope("attn"):
      a, kv = self.attn.attend(self.attn_norm(h), cache, pos0, block)
    h1 = h + a
    with jax.named_scope("gca"):
      mixed = h1 + self.gca(h1, k_mem, v_mem, idx, w, unserved=unserved)
    with jax.named_scope("mlp"):
      return (h1 if self.bypass else mixed) + self.mlp(self.mlp_norm(mixed)), kv


