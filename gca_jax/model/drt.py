"""DRT: the GCA language model.

tokens -> landmarks inserted -> embedding -> lower sliding-window layers -> chunk encoder
(landmark keys + shared chunk K/V memory) -> for each retrieval group: retrieval at the
landmarks, then upper layers (sliding window + GCA + MLP) -> final norm -> tied head, returned
for the raw (non-landmark) positions only. The serving engine (``gca_jax.infer``) calls the
same submodules and methods (``encode_chunks``, ``retrieve``, ``head``, the layers' ``step``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from gca_jax.config import ExecutionConfig, ModelConfig
from gca_jax.logical import constrain
from gca_jax.model.chunking import insert_landmarks, remove_landmarks
from gca_jax.model.gca import ChunkMemory, DecoderLayer, UpperLayer
from gca_jax.model.layers import Embedding, RMSNorm
from gca_jax.model.retrieval import select_chunks, serve_next_chunk
from pallas_kernels.gca import GCA_SAVED


def noise_key(rngs, stream: str = "gumbel") -> jax.Array:
  """A PRNG key from ``rngs``: an ``nnx.Rngs`` (its ``stream`` if present) or a key array."""
  if rngs is None:
    raise ValueError("train=True with Gumbel retrieval needs rngs (an nnx.Rngs or a jax PRNG key)")
  if isinstance(rngs, nnx.Rngs):
    return getattr(rngs, stream)() if stream in rngs else rngs()
  return rngs


def call_layer(layer, run: ExecutionConfig, *args):
  """Calls a layer, recomputing it in the backward pass when ``run.remat``; with
  ``run.remat_policy="save_gca"`` the GCA kernels' named outputs (``GCA_SAVED``) are kept."""
  if run.remat:
    policy = (jax.checkpoint_policies.save_only_these_names(*GCA_SAVED)
              if run.remat_policy == "save_gca" else None)
    return nnx.remat(lambda mod, *a: mod(*a), policy=policy)(layer, *args)
  return layer(*args)


class LanguageModel(nnx.Module):
  """What every model shares: the tied embedding / head and the final norm."""

  def head(self, h: Float[Array, "... D"]) -> Float[Array, "... V"]:
    """Final norm + tied LM head (float32 logits)."""
    with jax.named_scope("head"):
      logits = self.embed.attend(self.head_input(h))
    return constrain(logits, "batch", None, "vocab") if logits.ndim == 3 else logits

  def head_input(self, h: Float[Array, "... D"]) -> Float[Array, "... D"]:
    """What the tied head multiplies by the embedding table: the final-normed hidden state
    (a blocked cross-entropy takes it with ``embed.table`` instead of whole logits)."""
    return constrain(self.final_norm(h), "batch", None, None)

  def output(self, h: Float[Array, "B T D"], retrieval: list, return_hidden: bool) -> dict:
    """``forward``'s result: logits, or with ``return_hidden`` the pre-norm hidden states."""
    key, value = ("hidden", h) if return_hidden else ("logits", self.head(h))
    return {key: value, "retrieval": retrieval}

  def __call__(self, tokens: Int[Array, "B T"], *, train: bool = False, rngs=None) -> Float[Array, "B T V"]:
    return self.forward(tokens, train=train, rngs=rngs)["logits"]

  def _ids(self, tokens) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
      raise ValueError(f"{type(self).__name__} expects tokens of shape [batch, length], got {tokens.shape}")
    return tokens


class DRT(LanguageModel):
  """Decoder with Grouped Cross Attention over causally retrieved chunks."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, execution: ExecutionConfig | None = None):
    if cfg.model_type != "drt":
      raise ValueError(f"DRT needs model_type='drt', got {cfg.model_type!r}; use build_model")
    run = ExecutionConfig() if execution is None else execution
    self.cfg, self.run = cfg, run
    self.embed = Embedding(cfg, rngs)
    self.lower = nnx.List([DecoderLayer(cfg, "window", rngs, run) for _ in range(cfg.lower_layers)])
    self.enc_prenorm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
    self.encoder = nnx.List([
        DecoderLayer(cfg, "chunk", rngs, run, eps=cfg.encoder_norm_eps) for _ in range(cfg.encoder_layers)])
    self.enc_norm = RMSNorm(cfg.d_model, cfg.encoder_norm_eps, cfg)
    self.memory = ChunkMemory(cfg, rngs)
    self.lmk_norms = nnx.List([RMSNorm(cfg.d_model, cfg.norm_eps, cfg) for _ in cfg.upper_layers])
    self.groups = nnx.List([
        nnx.List([UpperLayer(cfg, rngs, run) for _ in range(n)]) for n in cfg.upper_layers])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)

  def encode_chunks(self, h: Float[Array, "B L D"]):
    """Chunk encoder over the lower-layer output: landmark keys [B, C, D] and chunk K/V."""
    cfg = self.cfg
    b, n, d = h.shape
    p = cfg.chunk_positions
    with jax.named_scope("encoder"):
      x = self.enc_prenorm(h.reshape(b * (n // p), p, d))
      for layer in self.encoder:
        x = call_layer(layer, self.run, x)
      enc = self.enc_norm(x).reshape(b, n // p, p, d)
      k_mem, v_mem = self.memory(enc)
      return enc[:, :, -1], k_mem, v_mem

  def retrieve(self, group: int, h_lmk: Float[Array, "B n D"], lmk_keys: Float[Array, "B M D"], *,
               c0=0, noise_key: jax.Array | None = None, block: int | None = None):
    """Group ``group``'s picks at the landmarks of chunks c0 .. c0+n-1 (hidden states
    ``h_lmk``) among chunks before each: idx, w [B, n, K] (not yet shifted)."""
    with jax.named_scope("retrieval"):
      q = self.lmk_norms[group](h_lmk)
      block = self.run.retrieval_block if block is None else block
      idx, w, _ = select_chunks(q, lmk_keys, self.cfg.top_k, c0=c0, block=block, noise_key=noise_key)
      return idx, w

  def forward(self, tokens: Int[Array, "B T"], *, train: bool = False, rngs=None,
              return_hidden: bool = False) -> dict:
    """Logits [B, T, V] (float32), or ``hidden`` [B, T, D] before the final norm when
    ``return_hidden``, plus each group's retrieval (idx, w) made at the landmarks."""
    cfg, run = self.cfg, self.run
    tokens = self._ids(tokens)
    length = tokens.shape[1]
    key = noise_key(rngs) if train and cfg.gumbel else None
    with jax.named_scope("embed"):
      x = insert_landmarks(tokens, cfg.chunk_size, cfg.lmk_id, cfg.pad_id).astype(jnp.int32)
      h = constrain(self.embed(x), "batch", None, None)
    for layer in self.lower:
      h = call_layer(layer, run, h)
    lmk_keys, k_mem, v_mem = self.encode_chunks(h)
    p = cfg.chunk_positions
    retrieval = []
    for g, layers in enumerate(self.groups):
      gkey = None if key is None else jax.random.fold_in(key, g)
      idx, w = self.retrieve(g, h[:, p - 1::p], lmk_keys, noise_key=gkey)
      retrieval.append((idx, w))
      idx_used, w_used = serve_next_chunk(idx, w)  # [B, C-1, K]: empty for a single chunk
      for layer in layers:
        h = call_layer(layer, run, h, k_mem, v_mem, idx_used, w_used)
    return self.output(remove_landmarks(h, cfg.chunk_size, length), retrieval, return_hidden)


def without_retrieval(model: DRT) -> DRT:
  """A copy of ``model`` whose GCA outputs are zero: retrieval still runs, but nothing it reads
  reaches the logits (with the bypass residual every upper layer becomes a plain window layer).
  The ablation that says what retrieval is worth to a trained DRT; ``model`` is not changed."""
  if not isinstance(model, DRT):
    raise ValueError(f"without_retrieval needs a DRT, got {type(model).__name__}: only the DRT "
                     "retrieves")
  out = nnx.clone(model)
  for layers in out.groups:
    for layer in layers:
      layer.gca.o.kernel[...] = jnp.zeros_like(layer.gca.o.kernel[...])
  return out
