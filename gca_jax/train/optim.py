"""Optax optimiser: AdamW, warmup + cosine decay to a floor, clipping, weight-decay mask."""

from __future__ import annotations

import jax
import optax

from gca_jax.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``lr``, then cosine decay to ``min_lr`` at ``total_steps``."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.min_lr)


def decay_mask(params, decay_all: bool):
  """True where weight decay applies: every parameter, or only matrices (not norms)."""
  return jax.tree_util.tree_map(lambda p: decay_all or p.ndim >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(
      lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
      weight_decay=cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.decay_all)))
  return optax.chain(*parts)
