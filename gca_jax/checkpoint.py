"""Orbax checkpoints of a run: the TrainState, the Grain iterator state and the Experiment JSON.

Layout: ``<workdir>/checkpoints/<step>/{state,data,experiment}``. ``state`` is the TrainState
(params, optimiser state, step, RNG) saved with ``StandardSave``; ``data`` is the Grain
iterator state, one JSON file per JAX process (Grain's own Orbax handler); ``experiment`` is
the resolved Experiment. Saves are asynchronous when ``CheckpointConfig.async_save`` (arrays
are copied to host before ``save`` returns; files are committed in the background) and the
last ``keep`` are kept. Restoring takes target shardings, so a run can resume on another mesh.
Anything that goes wrong while reading a checkpoint becomes a ``CheckpointError`` that names
the workdir, the step and what to do.
"""

from __future__ import annotations

import dataclasses
import os
import json
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from gca_jax import parallel
from gca_jax.config import CheckpointConfig, Experiment, MeshConfig, from_dict, migrate, to_dict
from gca_jax.train.optim import optimizer_for
from gca_jax.train.state import abstract_train_state


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or does not match the run; the message says what to do."""


class _IterState:
  """A frozen Grain iterator state in the shape Grain's handler expects (bytes of JSON)."""

  def __init__(self, state: dict | None = None):
    self.state = state

  def get_state(self) -> bytes:
    return json.dumps(self.state, indent=1).encode()

  def set_state(self, raw: bytes) -> None:
    self.state = json.loads(raw)

  def start_prefetch(self) -> None:  # called by Grain's handler after a restore
    pass


def _diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
  out = []
  for k in sorted(set(saved) | set(current)):
    a, b = saved.get(k), current.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}{k}.")
    elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
      out.append(f"{prefix}{k}: checkpoint {a!r}, now {b!r}")
  return out


class Checkpointer:
  """A run's checkpoints under ``<workdir>/checkpoints`` (one Orbax CheckpointManager)."""

  def __init__(self, workdir: str | epath.PathLike, cfg: CheckpointConfig):
    # Orbax needs an absolute path; "gs://..." and other URLs already are.
    self.workdir = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))
    self.directory = self.workdir / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True,
        cleanup_tmp_directories=True)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # noqa: BLE001 - any Orbax failure becomes a clear error
      raise CheckpointError(
          f"cannot open the checkpoints in {self.directory}: {type(e).__name__}: {e}. Move or "
          "delete that folder, or use another --workdir.") from e

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any, exp: Experiment) -> None:
    """Saves ``state`` (at ``step``), the iterator's current position and the experiment."""
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(_IterState(data_iter.get_state())),
        experiment=ocp.args.JsonSave(to_dict(exp)))
    self.manager.save(step, args=args, force=True)

  def saved_experiment(self, step: int) -> dict:
    """The experiment dict stored with checkpoint ``step``."""
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(experiment=ocp.args.JsonRestore()))
      return dict(out["experiment"])
    except Exception as e:  # noqa: BLE001
      raise self._error(step, e) from e

  def check_model(self, step: int, exp: Experiment) -> None:
    """Raises CheckpointError naming every field where checkpoint ``step``'s architecture
    differs from ``exp.model``; execution settings (kernel, remat, blocks) may differ."""
    saved = self.saved_experiment(step)
    diff = _diff(migrate(saved).get("model", {}), dataclasses.asdict(exp.model), "model.")
    if diff:
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} was written by a different model "
          f"configuration ({'; '.join(diff)}). Use another --workdir for this experiment, or "
          "rerun with the checkpoint's settings (see its experiment.json).")

  def restore(self, step: int, target: Any, data_iter: Any, exp: Experiment) -> Any:
    """The state of checkpoint ``step`` laid out like ``target`` (ShapeDtypeStructs with
    shardings, e.g. for another mesh); also moves ``data_iter`` (if not None) to the saved
    position. Checks the model config first."""
    self.check_model(step, exp)
    it = _IterState()
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(it)
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
    except Exception as e:  # noqa: BLE001
      raise self._error(step, e) from e
    if int(jax.device_get(state.step)) != step:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} holds a state at step "
                            f"{int(state.step)}; the folder is inconsistent. Delete "
                            f"{self.directory / str(step)} to fall back to an earlier one.")
    if data_iter is not None:
      data_iter.set_state(it.state)
    return state

  def _error(self, step: int, e: Exception) -> CheckpointError:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return CheckpointError(
        f"cannot restore checkpoint step {step} in {self.directory} ({type(e).__name__}: {msg}). "
        f"It is corrupt or incomplete, or was written by an incompatible version or config. "
        f"Delete {self.directory / str(step)} to resume from an earlier checkpoint "
        f"(steps: {self.all_steps()}), or start over in a new --workdir.")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_params(workdir: str | epath.PathLike, exp: Experiment, *, mesh=None,
                   fix: str = "") -> Any:
  """The ``nnx.Param`` state of the latest checkpoint in ``workdir`` laid out for ``mesh`` (one
  device when None: evaluation and serving), after checking that its architecture is
  ``exp.model``. The checkpoint's own optimiser state is read (its shape comes from the
  experiment saved with it, which may differ from ``exp``'s) and dropped. ``fix`` is the advice
  when there is no checkpoint. Raises CheckpointError."""
  fix = fix or (f"train first (python -m experiments.main --workdir={workdir}), or pass "
                "--random_init for a smoke run")
  ckdir = epath.Path(workdir) / "checkpoints"
  if not ckdir.is_dir():
    raise CheckpointError(f"no checkpoints in {ckdir}: {fix}")
  cp = Checkpointer(workdir, exp.checkpoint)
  try:
    step = cp.latest_step()
    if step is None:
      raise CheckpointError(f"{ckdir} holds no complete checkpoint: {fix}")
    cp.check_model(step, exp)
    saved = from_dict(cp.saved_experiment(step))
    mesh = mesh or parallel.make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
    _, _, _, target, _ = abstract_train_state(exp, mesh, optimizer_for(saved)[0])
    return cp.restore(step, target, None, exp).params
  finally:
    cp.close()
