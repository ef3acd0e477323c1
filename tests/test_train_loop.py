"""The training loop on ``tiny_synthetic`` (no network): loss falls, metrics rows, schedule,
weight-decay mask, gradient accumulation."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.registry import get_experiment
from gca_jax.checkpoint import CheckpointError, restore_params
from gca_jax.config import ConfigError, OptimConfig, apply_overrides
from gca_jax.model import build_model
from gca_jax.train import optim
from gca_jax.train.loop import train
from gca_jax.train.metrics import read_metrics
from gca_jax.train.state import init_state
from gca_jax.train.step import make_train_step


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  cache = tmp_path_factory.mktemp("data_cache")
  workdir = tmp_path_factory.mktemp("run") / "w"
  exp = apply_overrides(get_experiment("tiny_synthetic"),
                        ["train.steps=30", "train.eval_every=15", f"data.cache_dir={cache}"])
  summary = train(exp, str(workdir))
  return exp, workdir, summary


def test_loss_decreases(run):
  _, workdir, summary = run
  rows = [r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r]
  first, last = np.mean([r["loss"] for r in rows[:3]]), np.mean([r["loss"] for r in rows[-3:]])
  assert last < first - 1.0, (first, last)
  assert summary["step"] == 30 and not summary["preempted"]
  assert math.isfinite(summary["eval_loss"]) and summary["eval_ppl"] == pytest.approx(
      math.exp(summary["eval_loss"]))


def test_metrics_rows(run):
  exp, workdir, _ = run
  rows = read_metrics(workdir / "metrics.jsonl")
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, 31))
  for r in train_rows:
    for k in ("loss", "lr", "grad_norm", "tokens_per_sec", "retrieval_entropy", "retrieval_distance"):
      assert k in r, k
  assert all(isinstance(r["tokens_per_sec"], float) for r in train_rows[2:])
  evals = [r for r in rows if "eval_loss" in r]
  assert [r["step"] for r in evals] == [15, 30]
  assert all(r["eval_ppl"] == pytest.approx(math.exp(r["eval_loss"])) for r in evals)
  assert json.loads((workdir / "experiment.json").read_text())["name"] == "tiny_synthetic"
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  # the lr logged for step s is the schedule at s-1 (the update that produced step s)
  sched = optim.lr_schedule(exp.optim, exp.train.steps)
  for r in train_rows:
    assert r["lr"] == pytest.approx(float(sched(r["step"] - 1)), rel=1e-5)


def _hand_lr(cfg, t, segments):
  """The warmup-cosine by hand: ``segments`` are ``(first step, steps, peak)`` per stage; in its
  stage, step t warms up linearly from 0 to the peak, then decays by a cosine to ``min_lr``."""
  s0, n, peak = [seg for seg in segments if seg[0] <= t][-1]
  u = t - s0
  if u < cfg.warmup_steps:
    return peak * u / cfg.warmup_steps
  frac = min((u - cfg.warmup_steps) / (n - cfg.warmup_steps), 1.0)
  return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


def test_lr_schedule_matches_formula():
  cfg = OptimConfig(lr=2e-3, min_lr=4e-4, warmup_steps=12)
  total = 100
  sched = optim.lr_schedule(cfg, total)
  for t in range(0, total + 1):
    assert float(sched(t)) == pytest.approx(_hand_lr(cfg, t, ((0, total, cfg.lr),)), rel=1e-5, abs=1e-9), t
  assert float(sched(0)) == 0.0 and float(sched(cfg.warmup_steps)) == pytest.approx(cfg.lr)
  assert float(sched(total)) == pytest.approx(cfg.min_lr)
  assert float(sched(total + 50)) == pytest.approx(cfg.min_lr)  # stays at the floor


def test_lr_schedule_restarts_at_each_curriculum_stage():
  """restart_each_stage: the warmup-cosine of each stage is the formula over that stage alone;
  without the flag the stage starts change nothing."""
  cfg = OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=10, restart_each_stage=True)
  starts, total = [60], 100
  stages = ((0, 60, cfg.lr), (60, 40, cfg.lr))
  sched = optim.lr_schedule(cfg, total, starts)
  for t in range(0, total + 1):
    assert float(sched(t)) == pytest.approx(_hand_lr(cfg, t, stages), rel=1e-5, abs=1e-9), t
  assert float(sched(59)) < 1.01 * cfg.min_lr and float(sched(60)) == 0.0
  plain = optim.lr_schedule(dataclasses.replace(cfg, restart_each_stage=False), total, starts)
  for t in range(0, total + 1):  # without the flag: one warmup-cosine over all steps
    assert float(plain(t)) == pytest.approx(_hand_lr(cfg, t, ((0, total, cfg.lr),)), rel=1e-5, abs=1e-9), t
  exp = dataclasses.replace(get_experiment("demo_drt"), optim=cfg)
  assert optim.stage_starts_of(exp) == [1200]


def test_lr_schedule_restart_lr_sets_the_later_stages_peak():
  """restart_lr: the first stage peaks at lr, each later stage warms up to restart_lr and decays
  to min_lr over its own steps (hand formula); bad values are refused with the field named."""
  cfg = OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=10, restart_each_stage=True, restart_lr=8e-4)
  segments = ((0, 50, 2e-3), (50, 30, 8e-4), (80, 40, 8e-4))
  sched = optim.lr_schedule(cfg, 120, [50, 80])
  for t in range(0, 121):
    assert float(sched(t)) == pytest.approx(_hand_lr(cfg, t, segments), rel=1e-5, abs=1e-9), t
  assert max(float(sched(t)) for t in range(50, 120)) == pytest.approx(8e-4, rel=1e-6)
  for bad in (-1e-3, 1e-4):  # negative; below min_lr
    with pytest.raises(ConfigError, match="restart_lr"):
      OptimConfig(lr=2e-3, min_lr=2e-4, restart_lr=bad)
  with pytest.warns(UserWarning, match="restart_each_stage=true"):  # set but ignored: said so
    OptimConfig(lr=2e-3, min_lr=2e-4, restart_lr=8e-4)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    OptimConfig(lr=2e-3, min_lr=2e-4, restart_lr=8e-4, restart_each_stage=True)


def test_optimizer_for_steps_with_the_restarted_schedule():
  """The optimiser optimizer_for builds steps with the per-stage schedule: with a constant
  gradient of 1, no clipping and no decay, Adam's update at step t is -lr(t) / (1 + eps), with
  lr(t) the hand warmup-cosine of the stage holding t (stage 2 starts again from 0)."""
  cfg = OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=10, restart_each_stage=True,
                    clip_norm=0.0, weight_decay=0.0, eps=1e-8)
  base = get_experiment("demo_drt")
  exp = dataclasses.replace(base, optim=cfg,
                            data=dataclasses.replace(base.data, curriculum="120x32:60"),
                            train=dataclasses.replace(base.train, steps=100))
  stages = ((0, 60, cfg.lr), (60, 40, cfg.lr))

  tx, _ = optim.optimizer_for(exp)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  grads = {"w": jnp.ones(())}
  for t in range(100):
    updates, state = tx.update(grads, state, params)
    assert float(updates["w"]) == pytest.approx(-_hand_lr(cfg, t, stages) / (1 + cfg.eps), rel=1e-5,
                                               abs=1e-10), t


def test_weight_decay_mask():
  params = {"norm": {"scale": jnp.ones(4)}, "lin": {"kernel": jnp.ones((4, 4))}}
  assert optim.decay_mask(params, False) == {"norm": {"scale": False}, "lin": {"kernel": True}}
  assert optim.decay_mask(params, True) == {"norm": {"scale": True}, "lin": {"kernel": True}}
  # with zero gradients only decayed parameters move (lr > 0 after one warmup step)
  tx = optim.make_optimizer(OptimConfig(lr=1e-1, min_lr=0.0, warmup_steps=0, weight_decay=0.5), 10)
  opt_state = tx.init(params)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, opt_state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["norm"]["scale"], params["norm"]["scale"])
  np.testing.assert_allclose(new["lin"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)


def test_grad_accum_equals_one_big_batch():
  exp = get_experiment("tiny_synthetic")
  # model-agnostic logic: the sliding-window baseline compiles fastest
  cfg = dataclasses.replace(exp.model, model_type="sliding_window")
  tx = optax.sgd(1.0)  # new params = params - grad (Adam would amplify rounding differences)
  graphdef, state = init_state(build_model(cfg, rngs=nnx.Rngs(0)), tx, 0)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 64), 4, cfg.vocab_size - 1)
  batch = {"tokens": tokens}
  one, m1 = jax.jit(make_train_step(graphdef, tx, grad_accum=1))(state, batch)
  two, m2 = jax.jit(make_train_step(graphdef, tx, grad_accum=2))(state, batch)
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m2["grad_norm"], rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(two.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(state.params)))


def test_train_compiles_with_the_execution_compiler_options(tmp_path):
  """execution.cpu_compiler_options reaches XLA through the loop's jitted steps: an option XLA
  does not know is refused by XLA's compiler (so the tuned default is passed the same way)."""
  exp = apply_overrides(get_experiment("tiny_synthetic"),
                        ["train.steps=2", f"data.cache_dir={tmp_path / 'cache'}",
                         "execution.cpu_compiler_options=xla_cpu_not_an_option=1"])
  with pytest.raises(Exception, match="No such compile option: 'xla_cpu_not_an_option'"):
    train(exp, str(tmp_path / "w"))


def _leaves(workdir, exp):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(restore_params(workdir, exp))]


def test_init_from_starts_at_the_source_runs_params(run, tmp_path):
  """train.init_from: step 0 holds the source run's last checkpoint (read back from its folder
  with restore_params), not a fresh initialisation. One step at lr 1e-30 (a float32 no-op for
  these weights) lets the warm-started run's own checkpoint be compared with the source's."""
  exp, src, _ = run
  sets = ["train.steps=1", "train.eval_every=0", "optim.lr=1e-30", "optim.min_lr=0",
          "optim.warmup_steps=0", f"data.cache_dir={tmp_path / 'cache'}"]
  warm = apply_overrides(exp, [*sets, f"train.init_from={src}"])
  cold = apply_overrides(exp, sets)
  train(warm, str(tmp_path / "warm"))
  train(cold, str(tmp_path / "cold"))
  want = _leaves(src, exp)
  got = _leaves(tmp_path / "warm", warm)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  assert max(float(np.abs(a - b).max()) for a, b in zip(_leaves(tmp_path / "cold", cold), want)) > 1e-3
  rows = [r for r in read_metrics(tmp_path / "warm" / "metrics.jsonl") if "loss" in r]
  assert [r["step"] for r in rows] == [1]  # a new run: step 0, not the source's step 30


def test_init_from_refuses_a_missing_run_or_another_architecture(run, tmp_path):
  exp, src, _ = run
  base = ["train.steps=1", f"data.cache_dir={tmp_path / 'cache'}"]
  with pytest.raises(CheckpointError, match="no checkpoints in .*train.init_from must name"):
    train(apply_overrides(exp, [*base, f"train.init_from={tmp_path / 'nothing'}"]), str(tmp_path / "a"))
  assert not (tmp_path / "a").exists() and not (tmp_path / "nothing").exists()
  wide = apply_overrides(exp, [*base, f"train.init_from={src}", f"model.d_model={exp.model.d_model * 2}"])
  with pytest.raises(CheckpointError, match=r"model\.d_model: checkpoint"):
    train(wide, str(tmp_path / "b"))
  assert not (tmp_path / "b").exists()
