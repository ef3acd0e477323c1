"""Baselines from the same blocks: sliding-window and full-attention decoders (ALiBi, no
landmarks), with ``lower_layers + sum(upper_layers)`` layers (method-spec §6.2)."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from gca_jax.config import ModelConfig
from gca_jax.model.drt import call_layer
from gca_jax.model.gca import DecoderLayer
from gca_jax.model.layers import Embedding, RMSNorm
from gca_jax.model.sharding import constrain


class _DecoderLM(nnx.Module):
  kind = "window"

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embedding(cfg, rngs)
    self.layers = nnx.List([DecoderLayer(cfg, self.kind, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)

  def __call__(self, tokens: Int[Array, "B T"], *, train: bool = False, rngs=None) -> Float[Array, "B T V"]:
    return self.forward(tokens, train=train, rngs=rngs)["logits"]

  def forward(self, tokens: Int[Array, "B T"], *, train: bool = False, rngs=None) -> dict:
    del train, rngs  # deterministic: no dropout, no retrieval noise
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"{type(self).__name__} expects tokens of shape [batch, length], got {tokens.shape}")
    h = constrain(self.embed(jnp.where(tokens < 0, self.cfg.pad_id, tokens).astype(jnp.int32)), "batch", None, None)
    for layer in self.layers:
      h = call_layer(layer, self.cfg.remat, h)
    logits = self.embed.attend(constrain(self.final_norm(h), "batch", None, None))
    return {"logits": constrain(logits, "batch", None, "vocab"), "retrieval": []}


class SlidingWindowLM(_DecoderLM):
  """Causal sliding-window attention (window ``cfg.window``) with ALiBi."""

  kind = "window"


class FullAttentionLM(_DecoderLM):
  """Full causal attention with ALiBi."""

  kind = "full"
