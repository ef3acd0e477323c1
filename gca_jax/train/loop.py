"""The training loop: mesh, model, optimiser, data, checkpoints, metrics, exact resume.

``train(exp, workdir)`` resumes from the latest checkpoint in ``workdir`` if there is one: the
TrainState (params, optimiser, step, RNG) and the Grain iterator position are restored, so the
resumed run computes bit for bit the losses of an uninterrupted one (CPU). Step metrics stay on
device until a log, eval or checkpoint step, where they are fetched together; a non-finite loss
among them stops the run before any later checkpoint is written. SIGTERM (single process) or a
JAX preemption notice (multi-process) saves a checkpoint and returns with ``preempted``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from gca_jax import parallel
from gca_jax.checkpoint import Checkpointer, restore_params
from gca_jax.config import Experiment, to_dict
from gca_jax.data.pipeline import staged_datasets_from_config
from gca_jax.model import count_params
from gca_jax.provenance import host_facts
from gca_jax.train.metrics import MetricsWriter
from gca_jax.train.optim import optimizer_for
from gca_jax.train.state import abstract_train_state
from gca_jax.train.step import make_eval_step, make_train_step

BATCH_KEYS = ("tokens", "labels", "answer_mask")  # what the train step reads


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class _Preemption:
  """SIGTERM -> a flag (single process); JAX's preemption sync point (multi-process)."""

  def __init__(self):
    self.flag, self._old = False, None
    if jax.process_count() == 1:
      try:
        self._old = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread: no handler
        self._old = None

  def _handle(self, signum, frame):
    del signum, frame
    self.flag = True

  def reached(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.flag
    from jax.experimental import multihost_utils
    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except Exception:  # noqa: BLE001 - no preemption service: never preempted
      return False

  def close(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _fmt_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def write_experiment_json(exp: Experiment, workdir: str | os.PathLike) -> None:
  """``<workdir>/experiment.json`` (atomic), for humans and for eval tools."""
  path = epath.Path(workdir) / "experiment.json"
  tmp = path.parent / ".experiment.json.tmp"
  tmp.write_text(json.dumps(to_dict(exp), indent=2) + "\n")
  os.replace(tmp, path)


def train(exp: Experiment, workdir: str | os.PathLike, *, log=None) -> dict[str, Any]:
  """Trains ``exp`` in ``workdir`` (resuming if possible); returns a summary dict."""
  t_start = time.time()
  pid = jax.process_index()
  main = pid == 0
  log = log or (lambda msg: print(msg, flush=True) if main else None)
  workdir = epath.Path(workdir)
  total = exp.train.steps

  mesh = parallel.make_mesh(exp.mesh)
  tx, schedule = optimizer_for(exp)
  stages, val_ds, tok = staged_datasets_from_config(exp.data, total, log=log)
  from gca_jax.data.tokenizer import check_model_ids
  check_model_ids(tok, exp.model)  # vocabulary, pad and landmark ids

  warm = None
  if exp.train.init_from and not (workdir / "checkpoints").exists():  # before anything is written
    warm = restore_params(exp.train.init_from, exp, mesh=mesh, fix=(
        "train.init_from must name a trained run's --workdir (or be empty for a random "
        "initialisation)"))
  workdir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
  graphdef, abstract, shardings, target, init_fn = abstract_train_state(exp, mesh, tx)
  bsh = parallel.batch_sharding(mesh)
  rep = parallel.replicated(mesh)

  ckpt = Checkpointer(workdir, exp.checkpoint)
  current: list = [None, None]  # [stage index, its Grain iterator]

  def stage_of(step: int) -> int:
    """The stage whose batch takes the state from step ``step`` to ``step + 1``."""
    return max(j for j, (first, _, _) in enumerate(stages) if first <= step)

  def data_iter(step: int):
    """The iterator that yields the batch of step ``step + 1`` (its stage's, made on entry)."""
    i = stage_of(step)
    if current[0] != i:
      current[:] = [i, iter(stages[i][2])]
      if current[0] and step == stages[i][0]:
        log(f"[{exp.name}] step {step}: curriculum stage {i + 1}/{len(stages)}, windows of "
            f"{stages[i][1].seq_len} tokens, batch {stages[i][1].batch_size}")
    return current[1]

  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, target, data_iter(latest), exp)
    log(f"[{exp.name}] resumed from checkpoint step {latest} in {ckpt.directory}")
  else:
    state = jax.jit(init_fn, out_shardings=shardings)()
    if warm is not None:
      state = state.replace(params=warm)
      log(f"[{exp.name}] parameters from {exp.train.init_from} (train.init_from), step 0")
  start = int(jax.device_get(state.step))
  if main:
    write_experiment_json(exp, workdir)
  writer = MetricsWriter(workdir, start, pid)

  xla_options = exp.execution.compiler_options(mesh.devices.flat[0].platform)
  step_fn = parallel.jit_train_step(
      make_train_step(graphdef, tx, schedule, grad_accum=exp.optim.grad_accum,
                      answer_loss_weight=exp.train.answer_loss_weight), abstract, mesh,
      compiler_options=xla_options)
  eval_fn = jax.jit(make_eval_step(graphdef), in_shardings=(shardings.params, bsh),
                    out_shardings=rep, compiler_options=xla_options or None)
  local_rows = exp.data.batch_size // jax.process_count()
  def tokens_at(step: int) -> int:  # tokens of step ``step`` (1-based)
    cfg = stages[stage_of(step - 1)][1]
    return cfg.batch_size * cfg.seq_len

  def to_global(batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(bsh, np.asarray(v))
            for k, v in batch.items() if k in BATCH_KEYS}

  def evaluate(params) -> dict:
    nll, count = 0.0, 0.0
    for i, batch in enumerate(val_ds):
      if i >= exp.train.eval_batches:
        break
      if len(batch["tokens"]) != local_rows:
        continue
      out = jax.device_get(eval_fn(params, to_global(batch)))
      nll, count = nll + float(out["nll_sum"]), count + float(out["tokens"])
    if count == 0:
      return {}
    loss = nll / count
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 700.0)), "eval_tokens": count}

  n_params = count_params(nnx.merge(graphdef, abstract.params))
  log(f"[{exp.name}] {n_params:,} parameters, mesh {dict(mesh.shape)}, {jax.device_count()} "
      f"devices / {jax.process_count()} processes, steps {start}->{total}, workdir {workdir}")

  preempt = _Preemption()
  pending: list[tuple[int, dict]] = []
  last_saved = latest if latest is not None else -1
  summary: dict[str, Any] = {"resumed_from": start, "preempted": False, "parameters": n_params,
                             "host": host_facts()}
  last_loss = float("nan")
  t_mark, s_mark, rate = None, start, float("nan")
  t_loop = time.time()

  def flush(step: int) -> None:
    """Fetches pending step metrics, stops on a non-finite loss, writes logged rows."""
    nonlocal t_mark, s_mark, rate, last_loss
    fetched = jax.device_get([m for _, m in pending])
    steps = [s for s, _ in pending]
    pending.clear()
    now = time.time()
    if t_mark is None:  # the first step of this session: includes compilation
      summary["first_step_seconds"] = now - t_loop
    elif step > s_mark:
      rate = (step - s_mark) / (now - t_mark)
    t_mark, s_mark = now, step
    for s, m in zip(steps, fetched):
      loss, gnorm = float(m["loss"]), float(m["grad_norm"])
      if not (math.isfinite(loss) and math.isfinite(gnorm)):
        ckpt.wait()
        raise NonFiniteLossError(
            f"[{exp.name}] non-finite loss ({loss}, gradient norm {gnorm}) at step {s}; "
            f"stopped without saving this state. "
            f"The last good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}; lower "
            f"optim.lr or raise optim.warmup_steps and rerun from it.")
      last_loss = loss
      if s % exp.train.log_every and s != total:
        continue
      row = {k: float(m[k]) for k in ("loss", "lr", "grad_norm", "retrieval_entropy",
                                      "retrieval_distance") if k in m}
      row.update(steps_per_sec=rate, tokens_per_sec=rate * tokens_at(s))
      writer.write(s, row)
      if math.isfinite(rate):
        speed = (f"{rate:.2f} step/s {rate * tokens_at(s):,.0f} tok/s | "
                 f"ETA {_fmt_eta((total - s) / rate)}")
      else:
        speed = f"first step {summary.get('first_step_seconds', 0):.1f}s (compile)"
      log(f"[{exp.name}] step {s}/{total} ({100 * s / total:.0f}%) loss {loss:.4f} "
          f"lr {row.get('lr', 0):.2e} gnorm {gnorm:.2f} | {speed}")

  try:
    step = start
    while step < total:
      if preempt.reached(step):
        summary["preempted"] = True
        break
      state, m = step_fn(state, to_global(next(data_iter(step))))
      step += 1
      pending.append((step, m))
      do_eval = step == total or (exp.train.eval_every and step % exp.train.eval_every == 0)
      do_ckpt = step == total or step % exp.checkpoint.every == 0
      if step == start + 1 or do_eval or do_ckpt or step % exp.train.log_every == 0:
        flush(step)
      if do_eval and exp.train.eval_batches:
        ev = evaluate(state.params)
        if ev:
          writer.write(step, ev, prefix="eval")
          summary.update(ev)
          log(f"[{exp.name}] eval step {step}: loss {ev['eval_loss']:.4f} ppl {ev['eval_ppl']:.2f}")
        t_mark = time.time()  # throughput counts training steps only
      if do_ckpt:
        ckpt.save(step, state, data_iter(step), exp)
        last_saved = step
    if pending:
      flush(step)
    if summary["preempted"]:
      if last_saved != step:
        ckpt.save(step, state, data_iter(step), exp)
      log(f"[{exp.name}] preempted: saved checkpoint step {step}; rerun the same command to resume")
    elif start >= total:
      log(f"[{exp.name}] already at step {start} of {total}: nothing to train")
    ckpt.wait()
  finally:
    preempt.close()
    writer.close()
    ckpt.close()

  wall = time.time() - t_start
  summary.update(step=step, final_loss=last_loss, wall_seconds=wall, steps_per_sec=rate,
                 tokens_per_sec=rate * tokens_at(max(step, 1)))
  if main:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary
