"""Optax optimiser: AdamW, warmup + cosine decay to a floor, clipping, weight-decay mask."""

from __future__ import annotations

import jax
import optax

from gca_jax.config import OptimConfig


def _warmup_cosine(cfg: OptimConfig, steps: int, peak: float) -> optax.Schedule:
  warmup = min(cfg.warmup_steps, max(steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(steps, warmup + 1), end_value=cfg.min_lr)


def lr_schedule(cfg: OptimConfig, total_steps: int, stage_starts=()) -> optax.Schedule:
  """Linear warmup from 0 to ``lr``, then cosine decay to ``min_lr`` at ``total_steps``.

  With ``cfg.restart_each_stage`` the warmup and cosine start again at every curriculum stage
  (``stage_starts``: the first step of each stage after the first, e.g. from
  ``stage_starts_of``), each decaying to ``min_lr`` by the end of its own stage and the
  stages after the first peaking at ``restart_lr`` (``lr`` when 0); the optimiser's moments
  carry over."""
  restarts = list(stage_starts)  # increasing, inside (0, total_steps): DataConfig.stages
  if not (cfg.restart_each_stage and restarts):
    return _warmup_cosine(cfg, total_steps, cfg.lr)
  ends = [*restarts, total_steps]
  starts = [0, *restarts]
  peaks = [cfg.lr] + [cfg.restart_lr or cfg.lr] * len(restarts)
  return optax.join_schedules([_warmup_cosine(cfg, e - s, p) for s, e, p in zip(starts, ends, peaks)],
                              restarts)


def stage_starts_of(exp) -> list[int]:
  """First steps of an experiment's curriculum stages after the first (empty without one)."""
  return [first for first, _ in exp.data.stages(exp.train.steps)][1:]


def decay_mask(params, decay_all: bool):
  """True where weight decay applies: every parameter, or only matrices (not norms)."""
  return jax.tree_util.tree_map(lambda p: decay_all or p.ndim >= 2, params)


def _adamw(cfg: OptimConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(
      schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
      weight_decay=cfg.weight_decay, mask=lambda p: decay_mask(p, cfg.decay_all)))
  return optax.chain(*parts)


def make_optimizer(cfg: OptimConfig, total_steps: int, stage_starts=()) -> optax.GradientTransformation:
  return _adamw(cfg, lr_schedule(cfg, total_steps, stage_starts))


def optimizer_for(exp) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """An experiment's optimiser and the one schedule it steps with (also what the loop logs):
  ``exp.optim`` over ``exp.train.steps``, restarting at the curriculum's stages when
  ``restart_each_stage`` asks. Training and checkpoint restore build an ``Experiment``'s
  optimiser here, so neither can fall back to one cosine by leaving the stage starts out
  (``launch/aot.py`` compiles single-stage ``Run``s with ``make_optimizer``)."""
  schedule = lr_schedule(exp.optim, exp.train.steps, stage_starts_of(exp))
  return _adamw(exp.optim, schedule), schedule
