"""Sampling from a model with the incremental engine: greedy, temperature and top-k."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from gca_jax.config import FULL_ATTENTION_TYPES
from gca_jax.infer.engine import Engine


def sample(logits, rng, temperature: float, top_k: int | None):
  """Greedy when ``temperature == 0``; otherwise softmax(logits / T) restricted to the top-k."""
  if temperature < 0:
    raise ValueError(f"temperature={temperature} must be >= 0")
  if temperature == 0:
    return jnp.argmax(logits, -1).astype(jnp.int32)
  x = logits.astype(jnp.float32) / temperature
  if top_k is not None:
    if top_k < 1:
      raise ValueError(f"top_k={top_k} must be >= 1")
    kth = jax.lax.top_k(x, min(top_k, x.shape[-1]))[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  return jax.random.categorical(rng, x, axis=-1).astype(jnp.int32)


def generate(model, prompt: Int[Array, "B T"], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, rng: jax.Array | None = None, engine: Engine | None = None,
             segment_chunks: int = 64, offload: bool = False) -> np.ndarray:
  """Continues ``prompt`` (raw ids, [T] or [B, T], T >= 1) by ``max_new_tokens`` tokens.

  Whole chunks of the prompt go through the segmented prefill; the rest, and every new token,
  through single-token steps. Returns the new tokens [B, max_new_tokens] (or [max_new_tokens]).
  """
  prompt = np.asarray(prompt)
  squeeze = prompt.ndim == 1
  prompt = prompt[None] if squeeze else prompt
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"generate: prompt must be [T] or [B, T] with T >= 1, got {prompt.shape}")
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
  if temperature > 0 and rng is None:
    raise ValueError("generate: sampling with temperature > 0 needs rng (a jax PRNG key)")
  if model.cfg.model_type in FULL_ATTENTION_TYPES:
    return _generate_full(model, prompt, max_new_tokens, temperature, top_k, rng, squeeze)
  eng = engine or Engine(model, segment_chunks=segment_chunks, offload=offload)
  b, t = prompt.shape
  state = eng.new_state(b, t + max_new_tokens)
  s = model.cfg.chunk_size
  n_pre = ((t - 1) // s) * s if eng.drt else 0
  if n_pre:
    eng.prefill(state, prompt[:, :n_pre])
  logits = None
  for i in range(n_pre, t):
    logits = eng.step(state, prompt[:, i])
  out = []
  for i in range(max_new_tokens):
    key = None if rng is None else jax.random.fold_in(rng, i)
    tok = sample(logits, key, temperature, top_k)
    out.append(np.asarray(tok))
    if i + 1 < max_new_tokens:
      logits = eng.step(state, tok)
  res = np.stack(out, 1) if out else np.zeros((b, 0), np.int32)
  return res[0] if squeeze else res


def _generate_full(model, prompt, n, temperature, top_k, rng, squeeze):
  """Full attention has no bounded cache: re-run the whole sequence each step (short inputs)."""
  seq = jnp.asarray(prompt, jnp.int32)
  out = []
  for i in range(n):
    logits = model.forward(seq)["logits"][:, -1]
    key = None if rng is None else jax.random.fold_in(rng, i)
    tok = sample(logits, key, temperature, top_k)
    out.append(np.asarray(tok))
    seq = jnp.concatenate([seq, tok[:, None]], 1)
  res = np.stack(out, 1) if out else np.zeros((prompt.shape[0], 0), np.int32)
  return res[0] if squeeze else res
