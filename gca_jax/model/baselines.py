"""Baselines from the same blocks: sliding-window and full-attention decoders (ALiBi, or RoPE
for ``full_attention_rope``; no landmarks), with ``lower_layers + sum(upper_layers)`` layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Int

from gca_jax.config import ExecutionConfig, ModelConfig
from gca_jax.logical import constrain
from gca_jax.model.drt import LanguageModel, call_layer
from gca_jax.model.gca import DecoderLayer
from gca_jax.model.layers import Embedding, RMSNorm


class _DecoderLM(LanguageModel):
  kind = "window"

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, execution: ExecutionConfig | None = None):
    self.cfg = cfg
    self.run = ExecutionConfig() if execution is None else execution
    self.embed = Embedding(cfg, rngs)
    self.layers = nnx.List([DecoderLayer(cfg, self.kind, rngs, self.run) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)

  def forward(self, tokens: Int[Array, "B T"], *, train: bool = False, rngs=None,
              return_hidden: bool = False) -> dict:
    del train, rngs  # deterministic: no dropout, no retrieval noise
    tokens = self._ids(tokens)
    with jax.named_scope("embed"):
      h = constrain(self.embed(jnp.where(tokens < 0, self.cfg.pad_id, tokens).astype(jnp.int32)), "batch", None, None)
    for layer in self.layers:
      h = call_layer(layer, self.run, h)
    return self.output(h, [], return_hidden)


class SlidingWindowLM(_DecoderLM):
  """Causal sliding-window attention (window ``cfg.window``) with ALiBi."""

  kind = "window"


class FullAttentionLM(_DecoderLM):
  """Full causal attention with ALiBi."""

  kind = "full"


class FullAttentionRoPELM(_DecoderLM):
  """Full causal attention with RoPE at absolute positions and no ALiBi: the classic baseline
  whose perplexity blows up past the training length."""

  kind = "full_rope"
