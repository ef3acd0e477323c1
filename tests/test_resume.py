"""Exact resume after SIGKILL, checkpoint on SIGTERM, clear errors for bad checkpoints and
non-finite losses. Runs ``python -m experiments.main`` on ``tiny_synthetic`` (no network)."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from etils import epath

from experiments.registry import get_experiment
from gca_jax.checkpoint import CheckpointError
from gca_jax.config import apply_overrides
from gca_jax.train.loop import NonFiniteLossError, train
from gca_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Same program in every subprocess: the persistent compilation cache makes reruns cheap.
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "gca_jax_test_compile_cache")
SETS = ["--set=train.steps=60", "--set=train.eval_every=0", "--set=checkpoint.every=10"]


def _env(cache_dir) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(cache_dir),
             XLA_FLAGS="--xla_force_host_platform_device_count=1",
             JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("GCA_JAX_DISTRIBUTED", None)
  return env


def _cmd(workdir, *extra) -> list[str]:
  return [sys.executable, "-m", "experiments.main", "--experiment=tiny_synthetic",
          f"--workdir={workdir}", *SETS, *extra]


def _losses(workdir) -> dict[int, float]:
  return {r["step"]: r["loss"] for r in read_metrics(epath.Path(workdir) / "metrics.jsonl")
          if "loss" in r}


def _checkpoints(workdir) -> list[int]:
  d = epath.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _wait_for(pred, proc, timeout=120.0):
  t0 = time.time()
  while not pred():
    assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
    assert time.time() - t0 < timeout, "timed out"
    time.sleep(0.01)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("data_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
  """An uninterrupted run's workdir."""
  workdir = tmp_path_factory.mktemp("ref") / "w"
  proc = subprocess.run(_cmd(workdir), cwd=REPO, env=_env(cache_dir), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(_losses(workdir)) == list(range(1, 61))
  return workdir


def test_sigkill_then_rerun_reproduces_losses_bit_for_bit(reference, cache_dir, tmp_path):
  workdir = tmp_path / "w"
  kill_at = random.Random().randint(12, 45)
  proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(cache_dir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    _wait_for(lambda: _checkpoints(workdir) and max(_losses(workdir), default=0) >= kill_at, proc)
  finally:
    proc.kill()
    proc.communicate()
  killed_at = max(_losses(workdir))
  assert killed_at < 60, "the run finished before it was killed"
  proc = subprocess.run(_cmd(workdir), cwd=REPO, env=_env(cache_dir), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from checkpoint step" in proc.stdout
  ref, got = _losses(reference), _losses(workdir)
  assert sorted(got) == sorted(ref) == list(range(1, 61))
  diff = {s: (ref[s], got[s]) for s in ref if ref[s] != got[s]}
  assert not diff, f"killed at step {killed_at}; losses differ at {diff}"


def test_sigterm_saves_a_checkpoint_and_exits_0(cache_dir, tmp_path):
  workdir = tmp_path / "w"
  err_path = tmp_path / "stderr.txt"
  proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(cache_dir), stdout=subprocess.PIPE,
                          stderr=err_path.open("w"), text=True)
  try:
    _wait_for(lambda: max(_losses(workdir), default=0) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 0, err_path.read_text()[-3000:]
  assert "preempted: saved checkpoint" in out
  last = max(_losses(workdir))
  assert last < 60
  assert _checkpoints(workdir)[-1] == last, (_checkpoints(workdir), last)


def _exp(cache_dir, *sets):
  return apply_overrides(get_experiment("tiny_synthetic"),
                         [s.removeprefix("--set=") for s in SETS] + [f"data.cache_dir={cache_dir}",
                                                                    *sets])


def test_truncated_checkpoint_is_a_clear_error(reference, cache_dir, tmp_path):
  workdir = tmp_path / "w"
  subprocess.run(["cp", "-r", str(reference), str(workdir)], check=True)
  step_dir = workdir / "checkpoints" / "60" / "state"
  for f in step_dir.rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
  with pytest.raises(CheckpointError) as e:
    train(_exp(cache_dir, "train.steps=70"), str(workdir))
  msg = str(e.value)
  assert "step 60" in msg and str(workdir) in msg and "Delete" in msg


def test_other_model_config_is_a_clear_error(reference, cache_dir, tmp_path):
  workdir = tmp_path / "w"
  subprocess.run(["cp", "-r", str(reference), str(workdir)], check=True)
  with pytest.raises(CheckpointError, match=r"model.d_model: checkpoint 32, now 64"):
    train(_exp(cache_dir, "model.d_model=64"), str(workdir))


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(cache_dir, tmp_path):
  workdir = tmp_path / "w"
  exp = _exp(cache_dir, "optim.lr=1e30", "optim.min_lr=0", "checkpoint.every=1",
             "checkpoint.async_save=false", "train.steps=20",
             "model.model_type=sliding_window")  # any model diverges; this one compiles fastest
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step (\d+)") as e:
    train(exp, str(workdir))
  bad = int(str(e.value).split(" at step ")[1].split(";")[0])
  steps = _checkpoints(workdir)
  assert steps and steps[-1] == bad - 1, (steps, bad)
  assert f"last good checkpoint is step {bad - 1}" in str(e.value)


def test_restore_onto_another_mesh(reference, cache_dir):
  """A checkpoint written on one device restores onto a 2x2x2 (data, fsdp, tensor) mesh."""
  import jax
  import numpy as np

  from gca_jax import parallel
  from gca_jax.checkpoint import Checkpointer
  from gca_jax.config import MeshConfig
  from gca_jax.train.state import abstract_train_state
  from gca_jax.train.optim import make_optimizer

  exp = _exp(cache_dir)
  tx = make_optimizer(exp.optim, exp.train.steps)
  ckpt = Checkpointer(reference, exp.checkpoint)
  states = {}
  for name, mesh_cfg in (("one", MeshConfig(data=1)), ("eight", MeshConfig(data=2, fsdp=2, tensor=2))):
    mesh = parallel.make_mesh(mesh_cfg, jax.devices()[:mesh_cfg.data * mesh_cfg.fsdp * mesh_cfg.tensor])
    _, _, shardings, target, _ = abstract_train_state(exp, mesh, tx)
    states[name] = ckpt.restore(60, target, None, exp)
    for leaf, sh in zip(jax.tree_util.tree_leaves(states[name]), jax.tree_util.tree_leaves(shardings)):
      assert leaf.sharding == sh
  ckpt.close()
  sharded = [x for x in jax.tree_util.tree_leaves(states["eight"].params)
             if not x.sharding.is_fully_replicated]
  assert sharded, "expected some parameters to be split over fsdp / tensor"
  for a, b in zip(jax.tree_util.tree_leaves(states["one"]), jax.tree_util.tree_leaves(states["eight"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpointer_accepts_a_relative_workdir(tmp_path, monkeypatch):
  """``--workdir=runs/x`` (relative, as the README's commands use) saves and restores."""
  import jax
  import jax.numpy as jnp

  from gca_jax.checkpoint import Checkpointer
  from gca_jax.config import CheckpointConfig, Experiment
  from gca_jax.train.state import TrainState

  class _Iter:
    state = {"i": 3}

    def get_state(self):
      return self.state

    def set_state(self, state):
      self.state = state

  monkeypatch.chdir(tmp_path)
  exp = Experiment()
  state = TrainState(step=jnp.asarray(5, jnp.int32), params={"w": jnp.arange(4.0)}, opt_state=(),
                     rng=jax.random.PRNGKey(0))
  cp = Checkpointer("runs/rel", CheckpointConfig(async_save=False))
  cp.save(5, state, _Iter(), exp)
  cp.close()
  assert (tmp_path / "runs" / "rel" / "checkpoints" / "5").is_dir()
  it = _Iter()
  it.state = None
  target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  back = Checkpointer("runs/rel", CheckpointConfig(async_save=False)).restore(5, target, it, exp)
  assert int(back.step) == 5 and back.params["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
  assert it.state == {"i": 3}


def test_resume_and_serve_with_other_execution_settings(reference, cache_dir, tmp_path):
  """Execution settings are not part of a checkpoint's identity: a run trained with XLA GCA, no
  remat and the automatic attention block resumes with remat and another block (the losses of
  the uninterrupted run), and its checkpoint evaluates and generates with the Pallas kernel
  (interpret mode) exactly as with XLA."""
  import jax
  import numpy as np
  from flax import nnx

  from gca_jax.checkpoint import restore_params
  from gca_jax.infer import generate
  from gca_jax.model import build_model
  from gca_jax.train.step import loss_fn

  workdir = tmp_path / "w"
  subprocess.run(["cp", "-r", str(reference), str(workdir)], check=True)
  subprocess.run(["rm", "-rf", str(workdir / "checkpoints" / "60")], check=True)
  other = ["--set=execution.remat=true", "--set=execution.attn_block=16"]
  proc = subprocess.run(_cmd(workdir, *other), cwd=REPO, env=_env(cache_dir), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resumed from checkpoint step 50" in proc.stdout
  want, got = _losses(reference), _losses(workdir)
  for step in range(51, 61):
    assert abs(got[step] - want[step]) <= 1e-5 * abs(want[step]), (step, got[step], want[step])

  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 70), 1, 380)
  losses, continuations = [], []
  for sets in ([], ["execution.gca_impl=pallas", "execution.gca_platform=tpu",
                    "execution.gca_interpret=true"]):
    exp = _exp(cache_dir, *sets)
    model = build_model(exp.model, rngs=nnx.Rngs(7), execution=exp.execution)
    graphdef, fresh = nnx.split(model, nnx.Param)
    init_loss = float(loss_fn(fresh, graphdef, {"tokens": tokens}, None, train=False)[0])
    nnx.update(model, restore_params(reference, exp))
    graphdef, params = nnx.split(model, nnx.Param)
    losses.append(float(loss_fn(params, graphdef, {"tokens": tokens}, None, train=False)[0]))
    assert abs(losses[-1] - init_loss) > 0.1  # the checkpoint's weights, not the fresh init
    continuations.append(generate(model, np.asarray(tokens[:1, :40]), 5, segment_chunks=2))
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  np.testing.assert_array_equal(continuations[1], continuations[0])


def test_old_model_section_execution_keys(reference):
  """Experiment JSON from before the execution section still loads (its kernel/remat keys move
  there), and the old --set spelling names the new key."""
  import json

  from gca_jax.config import ConfigError, apply_overrides, from_dict

  d = json.loads((epath.Path(reference) / "experiment.json").read_text())
  d["model"].update(gca_impl="pallas", remat=True, attn_block=16, gca_interpret=True)
  d.pop("execution")
  exp = from_dict(d)
  assert (exp.execution.gca_impl, exp.execution.remat, exp.execution.attn_block) == ("pallas", True, 16)
  with pytest.raises(ConfigError, match="execution.remat"):
    apply_overrides(exp, ["model.remat=true"])


def test_curriculum_stages_switch_windows_and_resume_exactly(cache_dir, tmp_path):
  """``data.curriculum="64x16:6"``: steps 1-6 are those of a run on 64-token windows in batches
  of 16 (same schedule: equal losses), steps 7-14 read 128 x 8 (tokens per step from the logged
  rates); a run whose checkpoints after the stage boundary (step 6) and after step 10 are removed
  resumes to the uninterrupted run's losses bit for bit, in either stage."""
  sets = ["train.steps=14", "train.log_every=1", "train.eval_every=0", "checkpoint.every=2",
          "checkpoint.keep=20", "checkpoint.async_save=false"]
  cur = _exp(cache_dir, *sets, "data.curriculum=64x16:6")
  assert [(s, c.seq_len, c.batch_size, c.seed) for s, c in cur.data.stages(14)] == [
      (0, 64, 16, 0), (6, 128, 8, 1)]
  ref_dir = tmp_path / "ref"
  train(cur, str(ref_dir))
  ref = _losses(ref_dir)
  assert sorted(ref) == list(range(1, 15))
  rows = {r["step"]: r for r in read_metrics(ref_dir / "metrics.jsonl") if "loss" in r}
  per_step = {s: r["tokens_per_sec"] / r["steps_per_sec"] for s, r in rows.items()
              if r.get("steps_per_sec") == r.get("steps_per_sec") and r.get("steps_per_sec")}
  assert per_step and all(abs(v - (64 * 16 if s <= 6 else 128 * 8)) < 1e-6 for s, v in per_step.items())
  plain_dir = tmp_path / "plain"  # stage 1 alone: the same windows, batches and schedule
  train(_exp(cache_dir, *sets, "data.seq_len=64", "data.batch_size=16", "train.steps=14"),
        str(plain_dir))
  plain = _losses(plain_dir)
  assert [plain[s] for s in range(1, 7)] == [ref[s] for s in range(1, 7)]
  assert plain[7] != ref[7]  # from step 7 the curriculum reads 128-token windows
  for keep_upto in (6, 10):  # resume exactly at the boundary, and inside the last stage
    work = tmp_path / f"resume{keep_upto}"
    subprocess.run(["cp", "-r", str(ref_dir), str(work)], check=True)
    for s in _checkpoints(work):
      if s > keep_upto:
        subprocess.run(["rm", "-rf", str(work / "checkpoints" / str(s))], check=True)
    train(cur, str(work))
    got = _losses(work)
    assert {s: got[s] for s in range(keep_upto + 1, 15)} == {s: ref[s] for s in range(keep_upto + 1, 15)}
  # optim.restart_each_stage: the logged lr of step s is a warmup-cosine over s's own stage
  rs_dir = tmp_path / "restart"
  rs = _exp(cache_dir, *sets, "data.curriculum=64x16:6", "optim.restart_each_stage=true")
  train(rs, str(rs_dir))
  o = rs.optim

  def hand(t):  # the update of step t + 1; stages [0, 6) and [6, 14)
    s0, n = (0, 6) if t < 6 else (6, 8)
    u, w = t - s0, min(o.warmup_steps, n - 1)
    if u < w:
      return o.lr * u / w
    return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * min((u - w) / (n - w), 1.0)))

  lrs = {r["step"]: r["lr"] for r in read_metrics(rs_dir / "metrics.jsonl") if "loss" in r}
  assert sorted(lrs) == list(range(1, 15)) and lrs[7] == 0.0 and rows[7]["lr"] > 0
  assert all(lrs[s] == pytest.approx(hand(s - 1), rel=1e-5, abs=1e-9) for s in lrs), lrs


def test_bad_curriculum_is_a_clear_error(cache_dir):
  from gca_jax.config import ConfigError
  with pytest.raises(ConfigError, match=r"curriculum='64:16'.*SEQ_LENxBATCH:STEPS"):
    _exp(cache_dir, "data.curriculum=64:16")
  with pytest.raises(ConfigError, match=r"take 60 steps, not fewer than train.steps=60"):
    _exp(cache_dir, "data.curriculum=64x16:60")
  with pytest.raises(ConfigError, match=r"'64x0:5' is not .* with positive integers"):
    _exp(cache_dir, "data.curriculum=64x0:5")
  with pytest.raises(ConfigError, match=r"seq_len=30 is invalid: must be > 3\*layout_chunk=45"):
    _exp(cache_dir, "data.passkey=single", "data.layout_chunk=15", "data.curriculum=30x8:5")
