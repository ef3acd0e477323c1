"""Perplexity against length (docs/method.md, Evaluation protocols): non-overlapping windows of each length over
held-out tokens, exp(mean next-token NLL) per length. DRT and the sliding-window baseline run
through the segmented engine (exact: segments carry their retrieval across); full attention runs its forward pass when the
memory estimate fits the budget."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from gca_jax.evals import runtime
from gca_jax.infer import Engine

IGNORE = -100


def layout_targets(tokens: np.ndarray, cfg) -> np.ndarray:
  """Targets aligned with model positions: token t predicts t+1; landmarks/padding IGNORE."""
  b, t = tokens.shape
  tgt = np.full((b, t), IGNORE, np.int32)
  tgt[:, :-1] = tokens[:, 1:]
  if cfg.model_type != "drt":
    return tgt
  s = cfg.chunk_size
  c = -(-t // s)
  out = np.full((b, c, s + 1), IGNORE, np.int32)
  flat = np.full((b, c * s), IGNORE, np.int32)
  flat[:, :t] = tgt
  out[:, :, :s] = flat.reshape(b, c, s)
  return out.reshape(b, c * (s + 1))


def token_nll(model, windows: np.ndarray, forward=None) -> np.ndarray:
  """Next-token NLL [B, L-1] of windows [B, L] by one dense forward: entry p is
  -log P(token p+1 | tokens 0..p). ``forward(model, tokens)`` gives the raw-position logits
  (default ``model.forward(tokens)["logits"]``; pass a jitted one to reuse a compilation)."""
  tokens = jnp.asarray(windows)
  logits = model.forward(tokens)["logits"] if forward is None else forward(model, tokens)
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  return -np.take_along_axis(np.asarray(logp), np.asarray(windows)[:, 1:, None], -1)[..., 0]


def window_nll(model, engine: Engine | None, windows: np.ndarray, progress=None) -> tuple[float, int]:
  """Summed NLL and number of targets over a batch of windows [B, L]."""
  if engine is None:
    nll = token_nll(model, windows)
    return float(nll.sum()), int(nll.size)
  targets = layout_targets(windows, model.cfg)
  acc = [0.0, 0]

  def on_segment(h, pos0, n):
    tg = targets[:, pos0:pos0 + h.shape[1]]
    tg = np.pad(tg, ((0, 0), (0, h.shape[1] - tg.shape[1])), constant_values=IGNORE)
    s, c = engine.nll(h, jnp.asarray(tg))
    acc[0] += float(s)
    acc[1] += int(c)

  state = engine.new_state(windows.shape[0], windows.shape[1])
  engine.prefill(state, windows, on_segment=on_segment, progress=progress)
  return acc[0], acc[1]


def perplexity_eval(model, tokens, lengths, *, max_windows: int = 8, batch: int = 1,
                    segment_chunks: int = 256, offload: bool = False, budget_gb: float = 20.0,
                    model_name: str = "", engines: dict | None = None, progress=None,
                    log=print) -> list[dict]:
  """Rows ``{length, ppl, nll, windows, tokens, model}`` (or ``not_run`` with a reason)."""
  cfg = model.cfg
  tokens = np.asarray(tokens).reshape(-1)
  lengths = runtime.parse_lengths(lengths)
  if max_windows < 1:
    raise ValueError(f"max_windows={max_windows} must be >= 1")
  engines = {} if engines is None else engines  # segment size -> Engine (compiled once)
  rows = []
  for n in lengths:
    row = {"length": n, "model": model_name or cfg.model_type}
    if n < 2:
      rows.append(runtime.not_run({**row, "ppl": None}, "a window needs >= 2 tokens"))
      continue
    n_win = min(max_windows, len(tokens) // n)
    if n_win == 0:
      reason = f"held-out set has {len(tokens)} tokens, fewer than one window of {n}"
      log(f"ppl length {n}: not run ({reason})")
      rows.append(runtime.not_run({**row, "ppl": None, "windows": 0}, reason))
      continue
    reason = runtime.budget_reason(cfg, min(batch, n_win), n, segment_chunks, budget_gb)
    if reason:
      log(f"ppl length {n}: not run ({reason})")
      rows.append(runtime.not_run({**row, "ppl": None, "windows": 0}, reason))
      continue
    engine = runtime.engine_for(model, engines, n, segment_chunks, offload)
    t0 = time.perf_counter()
    total, count = 0.0, 0
    bar = progress(total=n_win, desc=f"ppl L={n}", leave=False) if progress else None
    for ids in runtime.batches(n_win, batch):
      win = np.stack([np.asarray(tokens[i * n:(i + 1) * n], np.int32) for i in ids])
      s, c = window_nll(model, engine, win, progress=progress if n >= (1 << 20) else None)
      total, count = total + s, count + c
      if bar is not None:
        bar.update(len(ids))
    if bar is not None:
      bar.close()
    nll = total / max(count, 1)
    dt = time.perf_counter() - t0
    row.update(ppl=math.exp(nll), nll=nll, windows=n_win, tokens=count, seconds=round(dt, 3))
    log(f"ppl length {n}: {row['ppl']:.3f} over {n_win} windows ({dt:.1f}s)")
    rows.append(row)
  return rows
