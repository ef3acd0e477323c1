"""Typed, validated configuration for gca-jax.

Every config is a frozen dataclass that validates itself on construction and raises
``ConfigError`` naming the field, the bad value and what would work.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MODEL_TYPES = ("drt", "sliding_window", "full_attention")
DTYPES = ("float32", "bfloat16", "float16")
GCA_IMPLS = ("xla", "pallas", "auto")


class ConfigError(ValueError):
  """A configuration value is invalid; the message says which and what would work."""


def _fail(cls: str, field: str, value: Any, expected: str) -> None:
  raise ConfigError(f"{cls}.{field}={value!r} is invalid: {expected}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a DRT (GCA) model or of a baseline built from the same blocks.

  Defaults describe a tiny CPU model. Baselines (``sliding_window``, ``full_attention``) use
  ``lower_layers + sum(upper_layers)`` decoder layers and ignore the retrieval fields.
  """

  model_type: str = "drt"
  vocab_size: int = 256
  d_model: int = 64
  num_heads: int = 2
  num_kv_heads: int = 2
  mlp_dim: int = 128
  lower_layers: int = 2
  upper_layers: tuple[int, ...] = (1,)
  encoder_layers: int = 1
  chunk_size: int = 15  # real tokens per chunk; a landmark makes chunk_size + 1 positions
  top_k: int = 3
  window: int = 32  # query i attends keys i-window..i (positions, landmarks included)
  softmax_one: bool = True
  gumbel: bool = True
  bypass_residual: bool = True
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  # Ids and numerics (method-spec §1): the landmark id defaults to the last vocabulary id.
  pad_id: int = 0
  landmark_id: int = -1  # -1: vocab_size - 1
  norm_eps: float = 1e-5
  encoder_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  init_std: float = 0.02
  attn_block: int = 0  # query block of blocked attention; 0 picks one from the window
  gca_impl: str = "xla"
  gca_interpret: bool = False  # run a Pallas GCA kernel in interpret mode (CPU tests)
  remat: bool = False  # recompute each layer in the backward pass

  def __post_init__(self):
    if isinstance(self.upper_layers, list):
      object.__setattr__(self, "upper_layers", tuple(self.upper_layers))
    self.validate()

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def num_layers(self) -> int:
    """Decoder depth of a baseline (and lower + upper layers of DRT)."""
    return self.lower_layers + sum(self.upper_layers)

  @property
  def chunk_positions(self) -> int:
    return self.chunk_size + 1

  @property
  def lmk_id(self) -> int:
    return self.vocab_size - 1 if self.landmark_id < 0 else self.landmark_id

  def validate(self) -> None:
    c = "ModelConfig"
    if self.model_type not in MODEL_TYPES:
      _fail(c, "model_type", self.model_type, f"use one of {MODEL_TYPES}")
    for name in ("vocab_size", "d_model", "num_heads", "num_kv_heads", "mlp_dim"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        _fail(c, name, v, "must be a positive integer")
    if self.d_model % self.num_heads:
      _fail(c, "d_model", self.d_model, f"must be divisible by num_heads={self.num_heads}")
    if self.num_heads % self.num_kv_heads:
      _fail(c, "num_heads", self.num_heads, f"must be a multiple of num_kv_heads={self.num_kv_heads}")
    if not isinstance(self.lower_layers, int) or self.lower_layers < 0:
      _fail(c, "lower_layers", self.lower_layers, "must be an integer >= 0")
    if not isinstance(self.upper_layers, tuple) or any(
        not isinstance(n, int) or n < 1 for n in self.upper_layers):
      _fail(c, "upper_layers", self.upper_layers, "must be a tuple of integers >= 1, one per retrieval group")
    if self.num_layers < 1:
      _fail(c, "lower_layers", self.lower_layers, "the model needs at least one decoder layer")
    if self.dtype not in DTYPES:
      _fail(c, "dtype", self.dtype, f"use one of {DTYPES}")
    if self.param_dtype not in DTYPES:
      _fail(c, "param_dtype", self.param_dtype, f"use one of {DTYPES}")
    if self.gca_impl not in GCA_IMPLS:
      _fail(c, "gca_impl", self.gca_impl, f"use one of {GCA_IMPLS}")
    if not 0 <= self.pad_id < self.vocab_size:
      _fail(c, "pad_id", self.pad_id, f"must be in [0, vocab_size={self.vocab_size})")
    if self.landmark_id >= self.vocab_size or self.landmark_id < -1:
      _fail(c, "landmark_id", self.landmark_id, f"must be -1 (last id) or in [0, {self.vocab_size})")
    if self.norm_eps <= 0 or self.encoder_norm_eps <= 0:
      _fail(c, "norm_eps", (self.norm_eps, self.encoder_norm_eps), "norm epsilons must be > 0")
    if self.attn_block < 0:
      _fail(c, "attn_block", self.attn_block, "must be 0 (automatic) or a positive block size")
    if self.model_type == "full_attention":
      return
    if not isinstance(self.window, int) or self.window < 1:
      _fail(c, "window", self.window, "must be a positive integer number of positions")
    if self.model_type != "drt":
      return
    if not self.upper_layers:
      _fail(c, "upper_layers", self.upper_layers, "a DRT model needs at least one retrieval group, e.g. (1,)")
    if self.encoder_layers < 0:
      _fail(c, "encoder_layers", self.encoder_layers, "must be an integer >= 0")
    if self.chunk_size < 1:
      _fail(c, "chunk_size", self.chunk_size, "must be >= 1 real token per chunk")
    if self.top_k < 1:
      _fail(c, "top_k", self.top_k, "must be >= 1 (top_k=1 trains no retriever: its weight is always 1; use >= 2)")
    if self.pad_id == self.lmk_id:
      _fail(c, "pad_id", self.pad_id, f"must differ from the landmark id {self.lmk_id}")
    # GCA serves chunk c+1 with chunks <= c-1, so every token of chunk c+1 must see all of
    # chunk c through the sliding window: the last position of c+1 to the first of c.
    need = 2 * self.chunk_positions - 1
    if self.window < need:
      _fail(c, "window", self.window,
            f"must be >= 2*(chunk_size+1)-1 = {need} so that the previous chunk is visible to "
            f"every token of the next one (retrieval only covers chunks before it)")


def replace(cfg, **changes):
  """``dataclasses.replace`` that keeps validation."""
  return dataclasses.replace(cfg, **changes)
