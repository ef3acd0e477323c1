"""Compiled inference for DRT and the sliding-window baseline: segmented prefill and decoding.

Prefill cuts the landmark-inserted sequence into segments of ``segment_chunks`` chunks (the
last one padded), so every segment reuses one compiled step per stage:

* ``front``: embedding, lower layers (rolling window caches), chunk encoder; the chunk memory
  is appended (device, or host numpy with ``offload``);
* per group: ``retrieve`` (per-group RMSNorm at the landmarks, blocked scores against all past
  landmarks, top-k, carried pick for the segment's first chunk), gather the picks, ``upper``.

``mode="full"`` runs every stage on every segment (exact everywhere; retrieval is quadratic in
the number of chunks). ``mode="tail"`` runs only ``front`` on every segment and the upper
stages on the last chunks that can influence positions ``>= tail_from``: an upper layer's
output at position i depends on its input at i-window..i and on the GCA of i's chunk, so after
U upper layers garbage before ``t0`` cannot reach positions ``>= t0 + U * window``; the lower
layers, the encoder and the memory never depend on retrieval, and group g's query at a landmark
inside that cone is itself exact. Everything at positions ``>= tail_from`` (and the state at the
end) is therefore exact, for any number of groups, at linear cost.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from gca_jax.config import FULL_ATTENTION_TYPES
from gca_jax.infer.kv_cache import empty_cache, roll
from gca_jax.infer.memory import ChunkStore
from gca_jax.infer.state import InferState
from gca_jax.model.chunking import insert_landmarks

MODES = ("full", "tail")


@dataclasses.dataclass
class PrefillOutput:
  state: InferState
  picks: list | None  # per group (idx, w) numpy [B, C, K] made at every landmark (full mode)
  segments: int
  tail_start: int | None  # first position (landmark layout) of the tail pass (tail mode)


def as_memory(k_g: Float[Array, "B n K S KH Dh"], v_g: Float[Array, "B n K S KH Dh"]):
  """Gathered picks [B, n, K, ...] as a memory of n*K chunks and the picks that name them."""
  b, n, k = k_g.shape[:3]
  idx = jnp.broadcast_to(jnp.arange(n * k, dtype=jnp.int32).reshape(1, n, k), (b, n, k))
  return k_g.reshape(b, n * k, *k_g.shape[3:]), v_g.reshape(b, n * k, *v_g.shape[3:]), idx


def _lower_steps(layers, h, caches, pos0, n_valid, block):
  """Windowed decoder layers over new positions; returns (h, new caches)."""
  new = []
  for layer, cache in zip(layers, caches):
    h, kv = layer.step(h, cache, pos0, block)
    new.append(roll(cache, kv, n_valid))
  return h, tuple(new)


def _group_steps(layers, h, caches, k_g, v_g, w, pos0, n_valid, block):
  """A retrieval group's upper layers over new positions, every chunk served by its gathered
  picks (the first one by the pick carried from before); returns (h, new caches)."""
  k_mem, v_mem, idx = as_memory(k_g, v_g)
  new = []
  for layer, cache in zip(layers, caches):
    h, kv = layer.step(h, k_mem, v_mem, idx, w, cache, pos0, block, unserved=0)
    new.append(roll(cache, kv, n_valid))
  return h, tuple(new)


class Engine:
  """Inference for one model: ``new_state``, ``prefill``, ``step`` / ``landmark_step``."""

  def __init__(self, model, *, segment_chunks: int = 256, offload: bool = False,
               key_block: int = 4096, attn_block: int = 0):
    cfg = model.cfg
    if cfg.model_type in FULL_ATTENTION_TYPES:
      raise ValueError("Engine supports DRT and sliding_window models; a full-attention model "
                       "has no bounded cache: call model.forward on the whole sequence")
    if segment_chunks < 1:
      raise ValueError(f"segment_chunks={segment_chunks} must be >= 1")
    self.cfg = cfg
    self.drt = cfg.model_type == "drt"
    self.p = cfg.chunk_size + 1 if self.drt else 1
    self.segment_chunks = segment_chunks
    self.seg_len = segment_chunks * (cfg.chunk_size + 1)  # positions per segment
    self.block = attn_block or (self.p if self.drt else 16)
    if self.seg_len % self.block:
      raise ValueError(f"attn_block={self.block} must divide the segment length {self.seg_len}")
    self.offload, self.key_block = offload, key_block
    self.graphdef, self.params = nnx.split(model)
    self.traces: collections.Counter = collections.Counter()
    self.groups = len(cfg.upper_layers) if self.drt else 0
    self._front = jax.jit(self._front_fn)
    self._retrieve = jax.jit(self._retrieve_fn, static_argnums=(0, 7))
    self._upper = jax.jit(self._upper_fn, static_argnums=0)
    self._head = jax.jit(self._head_fn)
    self._nll = jax.jit(self._nll_fn)
    self._token = jax.jit(self._token_fn)
    self._landmark = jax.jit(self._landmark_fn, static_argnums=0)

  # ----------------------------------------------------------------- state
  def new_state(self, batch: int, max_tokens: int) -> InferState:
    """An empty state with room for ``max_tokens`` raw tokens."""
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    cache = lambda: empty_cache(batch, cfg.window, cfg.num_kv_heads, cfg.head_dim, dt)
    n_lower = cfg.lower_layers if self.drt else cfg.num_layers
    lower = tuple(cache() for _ in range(n_lower))
    if not self.drt:
      return InferState(batch, 0, lower, (), None, [])
    chunks = -(-max_tokens // cfg.chunk_size) + 1
    capacity = chunks + self.segment_chunks
    block = min(self.key_block, -(-capacity // 64) * 64)
    mem = ChunkStore(batch, capacity, cfg.chunk_size, cfg.num_kv_heads, cfg.head_dim, cfg.d_model,
                     offload=self.offload, dtype=dt, key_block=block)
    upper = tuple(tuple(cache() for _ in range(n)) for n in cfg.upper_layers)
    picks = [(jnp.zeros((batch, cfg.top_k), jnp.int32), jnp.zeros((batch, cfg.top_k), jnp.float32))
             for _ in cfg.upper_layers]
    buf = jnp.zeros((batch, self.p, cfg.d_model), dt)
    return InferState(batch, 0, lower, upper, mem, picks, chunk_buf=buf)

  def _model(self, params):
    return nnx.merge(self.graphdef, params)

  def _lower_layers(self, model):
    return model.lower if self.drt else model.layers

  # ----------------------------------------------------------------- compiled stages
  def _front_fn(self, params, x, caches, pos0, n_valid):
    self.traces["front"] += 1
    model = self._model(params)
    h, new = _lower_steps(self._lower_layers(model), model.embed(x), caches, pos0, n_valid, self.block)
    if not self.drt:
      return h, new, None
    return h, new, model.encode_chunks(h)

  def _retrieve_fn(self, g, params, h, lmk_keys, c0, carried, n_valid, key_block):
    self.traces[f"retrieve{g}"] += 1
    model = self._model(params)
    idx, w = model.retrieve(g, h[:, self.p - 1::self.p], lmk_keys, c0=c0, block=key_block)
    idx_used = jnp.concatenate([carried[0][:, None], idx[:, :-1]], 1)
    w_used = jnp.concatenate([carried[1][:, None], w[:, :-1]], 1)
    last = (jax.lax.dynamic_index_in_dim(idx, n_valid - 1, 1, keepdims=False),
            jax.lax.dynamic_index_in_dim(w, n_valid - 1, 1, keepdims=False))
    return idx, w, idx_used, w_used, last

  def _upper_fn(self, g, params, h, caches, k_g, v_g, w_used, pos0, n_valid):
    self.traces[f"upper{g}"] += 1
    model = self._model(params)
    return _group_steps(model.groups[g], h, caches, k_g, v_g, w_used, pos0, n_valid, self.block)

  def _head_fn(self, params, h):
    self.traces["head"] += 1
    return self._model(params).head(h)

  def _nll_fn(self, params, h, targets):
    """Summed next-token NLL and count over targets >= 0 (targets < 0 are ignored)."""
    self.traces["nll"] += 1
    logits = self._head_fn(params, h)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ok = targets >= 0
    nll = -jnp.take_along_axis(logp, jnp.where(ok, targets, 0)[..., None], -1)[..., 0]
    return jnp.sum(jnp.where(ok, nll, 0.0)), jnp.sum(ok)

  def logits(self, h: Float[Array, "B n D"]) -> Float[Array, "B n V"]:
    """Final norm + tied head for selected hidden states only."""
    return self._head(self.params, h)

  def nll(self, h, targets):
    return self._nll(self.params, h, targets)

  # ----------------------------------------------------------------- prefill
  def _run_groups(self, state: InferState, h, c0: int, n_valid: int, caches, pos0, collect):
    """Retrieval + upper layers of every group for one segment; returns h, caches, picks."""
    mem = state.memory
    new_caches, picks = [], []
    for g in range(self.groups):
      idx, w, idx_used, w_used, last = self._retrieve(
          g, self.params, h, mem.lmk, jnp.int32(c0), state.picks[g], jnp.int32(n_valid), mem_block(mem))
      k_g, v_g = mem.gather(idx_used)
      h, cg = self._upper(g, self.params, h, caches[g], k_g, v_g, w_used, pos0, jnp.int32(n_valid * self.p))
      new_caches.append(cg)
      state.picks[g] = last
      if collect:
        picks.append((np.asarray(idx[:, :n_valid]), np.asarray(w[:, :n_valid])))
    return h, tuple(new_caches), picks

  def prefill(self, state: InferState, tokens: Int[np.ndarray, "B T"], *, mode: str = "full",
              tail_from: int | None = None,
              on_segment: Callable[[jax.Array, int, int], None] | None = None,
              collect_picks: bool = False, progress=None) -> PrefillOutput:
    """Runs ``tokens`` (raw ids; a DRT state must be at a chunk boundary) through the model.

    ``on_segment(h, pos0, n_valid)`` receives the last layer's hidden states [B, Ls, D] of
    each processed segment (positions ``pos0 ..``, first ``n_valid`` real). In ``tail`` mode
    it is called once, for the tail pass, which covers every position ``>= tail_from``
    (landmark layout, absolute).
    """
    if mode not in MODES:
      raise ValueError(f"prefill mode={mode!r}: use one of {MODES}")
    cfg = self.cfg
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[0] != state.batch:
      raise ValueError(f"prefill expects tokens [batch={state.batch}, T], got {tokens.shape}")
    if self.drt:
      if state.pos % self.p:
        raise ValueError("prefill must start at a chunk boundary; feed the rest with step()")
      x = insert_landmarks(tokens.astype(np.int32), cfg.chunk_size, cfg.lmk_id, cfg.pad_id)
    else:
      x = np.where(tokens < 0, cfg.pad_id, tokens).astype(np.int32)
    total = x.shape[1]
    n_seg = -(-total // self.seg_len)
    if self.drt and mode == "tail":
      reach = sum(cfg.upper_layers) * cfg.window
      if tail_from is None:
        raise ValueError("prefill(mode='tail') needs tail_from (first position that must be exact)")
      tc0 = (tail_from - reach) // self.p
      end_chunk = (state.pos + total) // self.p
      if tc0 * self.p <= state.pos:  # short input: the tail is everything
        mode = "full"
      elif end_chunk - tc0 > self.segment_chunks:
        raise ValueError(f"tail of {end_chunk - tc0} chunks (from position {tail_from} minus "
                         f"{reach} positions of upper-layer reach) is longer than a segment "
                         f"({self.segment_chunks} chunks): use mode='full' or larger segments")
    picks = [[] for _ in range(self.groups)] if collect_picks else None
    kept: list = []  # (first chunk, h numpy) of recent segments, for the tail pass
    bar = progress(total=n_seg, desc="segments", leave=False) if progress else None
    for s in range(n_seg):
      xs = x[:, s * self.seg_len:(s + 1) * self.seg_len]
      n_pos = xs.shape[1]
      if n_pos < self.seg_len:
        xs = np.pad(xs, ((0, 0), (0, self.seg_len - n_pos)), constant_values=cfg.pad_id)
      pos0 = jnp.int32(state.pos)
      h, state.lower, enc = self._front(self.params, jnp.asarray(xs), state.lower, pos0, jnp.int32(n_pos))
      if self.drt:
        n_valid = n_pos // self.p
        c0 = state.memory.count
        state.memory.append(*enc, n_valid)
        if mode == "full":
          h, state.upper, pk = self._run_groups(state, h, c0, n_valid, state.upper, pos0, collect_picks)
          if collect_picks:
            for g, p in enumerate(pk):
              picks[g].append(p)
        else:
          kept = [kc for kc in kept if kc[0] + kc[1].shape[1] // self.p > tc0] + [(c0, h)]
      if mode == "full" and on_segment is not None:
        on_segment(h, state.pos, n_pos)
      state.pos += n_pos
      if bar is not None:
        bar.update(1)
    if bar is not None:
      bar.close()
    tail_start = None
    if self.drt and mode == "tail":
      tail_start = self._tail(state, kept, tc0, on_segment)
    if collect_picks:
      picks = [(np.concatenate([p[0] for p in pg], 1), np.concatenate([p[1] for p in pg], 1))
               for pg in picks]
    return PrefillOutput(state, picks, n_seg, tail_start)

  def _tail(self, state: InferState, kept, tc0: int, on_segment) -> int:
    """Upper layers over chunks tc0 .. end from fresh caches (exact from tail_from on)."""
    cfg = self.cfg
    end = state.memory.count
    parts = []
    for c_first, h in kept:
      lo, hi = max(tc0, c_first), min(end, c_first + h.shape[1] // self.p)
      if hi > lo:
        parts.append(np.asarray(h[:, (lo - c_first) * self.p:(hi - c_first) * self.p]))
    h = jnp.asarray(np.concatenate(parts, 1))
    n = end - tc0
    dt = jnp.dtype(cfg.dtype)
    fresh = tuple(tuple(empty_cache(state.batch, cfg.window, cfg.num_kv_heads, cfg.head_dim, dt)
                        for _ in range(k)) for k in cfg.upper_layers)
    for g in range(self.groups):  # chunk tc0's own pick is outside the exact cone: weight 0
      state.picks[g] = (jnp.zeros_like(state.picks[g][0]), jnp.zeros_like(state.picks[g][1]))
    pos0 = tc0 * self.p
    h, state.upper, _ = self._run_groups(state, h, tc0, n, fresh, jnp.int32(pos0), False)
    if on_segment is not None:
      on_segment(h, pos0, n * self.p)
    return pos0

  # ----------------------------------------------------------------- decoding
  def _token_fn(self, params, tok, lower, upper, buf, gathered, ws, pos):
    self.traces["token"] += 1
    model = self._model(params)
    one = jnp.int32(1)
    h, new_lower = _lower_steps(self._lower_layers(model), model.embed(tok[:, None]), lower, pos, one, 1)
    new_upper = []
    if self.drt:
      buf = jax.lax.dynamic_update_slice_in_dim(buf, h.astype(buf.dtype), pos % self.p, axis=1)
      for g, layers in enumerate(model.groups):
        h, caches = _group_steps(layers, h, upper[g], *gathered[g], ws[g][:, None], pos, one, 1)
        new_upper.append(caches)
    return model.head(h)[:, 0], new_lower, tuple(new_upper), buf

  def _landmark_fn(self, key_block, params, lower, upper, buf, gathered, ws, pos, lmk_keys, count):
    self.traces["landmark"] += 1
    cfg = self.cfg
    model = self._model(params)
    one = jnp.int32(1)
    h = model.embed(jnp.full((buf.shape[0], 1), cfg.lmk_id, jnp.int32))
    h, new_lower = _lower_steps(model.lower, h, lower, pos, one, 1)
    buf = buf.at[:, self.p - 1].set(h[:, 0].astype(buf.dtype))
    enc = model.encode_chunks(buf)
    new_upper, picks = [], []
    for g, layers in enumerate(model.groups):
      # The same retrieval as training, per-group norm included (the reference code omits it).
      picks.append(tuple(x[:, 0] for x in model.retrieve(g, h, lmk_keys, c0=count, block=key_block)))
      h, caches = _group_steps(layers, h, upper[g], *gathered[g], ws[g][:, None], pos, one, 1)
      new_upper.append(caches)
    return new_lower, tuple(new_upper), enc, picks

  def _ensure_gathered(self, state: InferState) -> None:
    chunk = state.pos // self.p
    if state.gathered_chunk != chunk:
      state.gathered = [state.memory.gather(idx[:, None, :]) for idx, _ in state.picks]
      state.gathered_chunk = chunk

  def step(self, state: InferState, tok: Int[Array, "B"]) -> Float[Array, "B V"]:
    """Feeds one raw token per row; returns its next-token logits. At a chunk's end, the
    landmark step (encoder, memory append, new retrieval per group) runs automatically."""
    tok = jnp.asarray(tok, jnp.int32).reshape(state.batch)
    if not self.drt:
      logits, state.lower, _, _ = self._token(self.params, tok, state.lower, (), None, [], [],
                                              jnp.int32(state.pos))
      state.pos += 1
      return logits
    self._ensure_gathered(state)
    ws = [w for _, w in state.picks]
    logits, state.lower, state.upper, state.chunk_buf = self._token(
        self.params, tok, state.lower, state.upper, state.chunk_buf, state.gathered, ws,
        jnp.int32(state.pos))
    state.pos += 1
    if state.pos % self.p == self.p - 1:
      self.landmark_step(state)
    return logits

  def landmark_step(self, state: InferState) -> list:
    """The landmark position of the current chunk; returns each group's new (idx, w) [B, K]."""
    mem = state.memory
    if mem.count + 1 > mem.capacity:
      raise ValueError(f"the state's chunk memory is full ({mem.capacity} chunks); make a state "
                       "with a larger max_tokens")
    ws = [w for _, w in state.picks]
    state.lower, state.upper, enc, picks = self._landmark(
        mem_block(mem), self.params, state.lower, state.upper, state.chunk_buf, state.gathered, ws,
        jnp.int32(state.pos), mem.lmk, jnp.int32(mem.count))
    mem.append(*enc, 1)
    state.picks = list(picks)
    state.pos += 1
    return picks


def mem_block(mem: ChunkStore) -> int:
  """Key block of a store (its capacity is a whole number of blocks)."""
  return mem.key_block
