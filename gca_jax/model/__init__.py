"""gca-jax models: DRT (GCA) and its baselines."""

from __future__ import annotations

from flax import nnx

from gca_jax.config import ExecutionConfig, ModelConfig
from gca_jax.model.baselines import FullAttentionLM, FullAttentionRoPELM, SlidingWindowLM
from gca_jax.model.drt import DRT, without_retrieval

_MODELS = {"drt": DRT, "sliding_window": SlidingWindowLM, "full_attention": FullAttentionLM,
           "full_attention_rope": FullAttentionRoPELM}


def build_model(config: ModelConfig, *, rngs: nnx.Rngs, execution: ExecutionConfig | None = None):
  """The model named by ``config.model_type``, run with ``execution`` (default settings if None)."""
  return _MODELS[config.model_type](config, rngs=rngs, execution=execution)


def count_params(model) -> int:
  """Number of trainable parameters."""
  import jax
  return sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))


__all__ = ["DRT", "SlidingWindowLM", "FullAttentionLM", "FullAttentionRoPELM", "build_model", "count_params",
           "without_retrieval"]
