"""Model presets: the paper's configurations and tiny CPU models (docs/method.md, The forward pass)."""

from __future__ import annotations

from gca_jax.config import ConfigError, ModelConfig

# The authors' config_63: d 768, 12 heads, SwiGLU 2048, 6 lower + 6 upper layers, 2 encoder
# layers, 63-token chunks, top-8, window 512, GPT-2 vocabulary + 8 specials (landmark 50264,
# pad 50257).
PAPER_DRT_128M = ModelConfig(
    model_type="drt", vocab_size=50265, d_model=768, num_heads=12, num_kv_heads=12, mlp_dim=2048,
    lower_layers=6, upper_layers=(6,), encoder_layers=2, chunk_size=63, top_k=8, window=512,
    softmax_one=True, gumbel=True, bypass_residual=True, dtype="bfloat16", param_dtype="float32",
    pad_id=50257, landmark_id=50264)

MODEL_PRESETS: dict[str, ModelConfig] = {
    "paper_drt_128m": PAPER_DRT_128M,
    # retrieval x2: two groups of 3 upper layers [inferred from the paper's figure]
    "paper_drt_x2": ModelConfig(**{**PAPER_DRT_128M.__dict__, "upper_layers": (3, 3)}),
    # the sliding-window base: 12 layers, window 512, ALiBi, same blocks
    "paper_base_12l": ModelConfig(**{**PAPER_DRT_128M.__dict__, "model_type": "sliding_window"}),
    # the "+2 layers" base: as many decoder layers as DRT runs (6 lower + 6 upper + 2 encoder)
    "paper_base_14l": ModelConfig(**{**PAPER_DRT_128M.__dict__, "model_type": "sliding_window",
                                     "lower_layers": 8}),
    "paper_full_12l": ModelConfig(**{**PAPER_DRT_128M.__dict__, "model_type": "full_attention"}),
    "tiny_cpu": ModelConfig(),
    "tiny_cpu_sliding_window": ModelConfig(model_type="sliding_window"),
    "tiny_cpu_full_attention": ModelConfig(model_type="full_attention"),
}


def model_preset(name: str) -> ModelConfig:
  if name not in MODEL_PRESETS:
    raise ConfigError(f"unknown model preset {name!r}; known: {sorted(MODEL_PRESETS)}")
  return MODEL_PRESETS[name]
