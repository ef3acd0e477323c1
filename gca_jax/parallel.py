"""Device mesh and shardings for params, train state and batches.

Mesh axes are ("data", "fsdp", "tensor"). Every parameter declares its logical axes where it is
created (``gca_jax.logical.axes``, kept as ``nnx.Param`` metadata, which optax carries into the
optimiser state); the one rules table ``gca_jax.logical.RULES`` maps them to mesh axes: the batch
splits over data x fsdp, parameters are fully sharded over fsdp on their ``embed`` dimension
(FSDP / ZeRO-3) and over tensor on heads / mlp / vocab. A dimension that does not divide by its
mesh axes stays replicated. Mesh axes are ``Auto`` so XLA propagates shardings through the model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from gca_jax.config import ConfigError, MeshConfig
from gca_jax.logical import METADATA_KEY, logical_to_spec

AXES = ("data", "fsdp", "tensor")


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over ``devices`` (default: all); -1 takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n % fixed:
      raise ConfigError(
          f"MeshConfig(data={cfg.data}, fsdp={cfg.fsdp}, tensor={cfg.tensor}): the fixed axes "
          f"(product {fixed}) must divide the {n} devices")
    sizes[sizes.index(-1)] = n // fixed
  elif fixed != n:
    raise ConfigError(
        f"MeshConfig(data={cfg.data}, fsdp={cfg.fsdp}, tensor={cfg.tensor}): data*fsdp*tensor = "
        f"{fixed} must equal the {n} devices (or set one axis to -1)")
  types = (AxisType.Auto,) * len(AXES)
  try:
    return jax.make_mesh(tuple(sizes), AXES, axis_types=types, devices=devices)
  except NotImplementedError:  # sizes that split a physical torus axis (e.g. 32x2 on 4x4x4)
    return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=types)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def declared_axes(var: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical axes a parameter declared at creation (None: it declared none)."""
  names = var.get_metadata(METADATA_KEY, None) if var.has_metadata(METADATA_KEY) else None
  return None if names is None else tuple(names)


def _sharding(var, mesh: Mesh) -> NamedSharding:
  names = declared_axes(var)
  if names is None:
    return replicated(mesh)
  return NamedSharding(mesh, logical_to_spec(names, var.shape, mesh))


def state_shardings(state, mesh: Mesh):
  """Shardings for a TrainState (or any pytree holding the params and optimizer state).

  Every ``nnx.Variable`` leaf (a parameter, Adam's mu / nu of it ...) carries the logical axes
  its parameter declared and gets their sharding; everything else (step, rng, counts) is
  replicated. Works for any optax state structure.
  """
  return jax.tree_util.tree_map(
      lambda x: x.replace(_sharding(x, mesh)) if _is_var(x) else replicated(mesh), state,
      is_leaf=_is_var)


def undeclared_params(params) -> list[str]:
  """Paths of parameters that declared no logical axes (or the wrong number of them)."""
  bad = []
  for path, var in jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_var):
    names = declared_axes(var) if _is_var(var) else None
    if names is None or len(names) != len(var.shape):
      bad.append(jax.tree_util.keystr(path))
  return bad


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Every batch array splits its leading (batch) dimension over data x fsdp."""
  return NamedSharding(mesh, logical_to_spec(("batch",), (mesh.shape["data"] * mesh.shape["fsdp"],), mesh))


def jit_train_step(train_step, state, mesh: Mesh, compiler_options: dict | None = None):
  """``train_step`` jitted with state / batch shardings, replicated metrics, donated state
  (``compiler_options``: XLA options, e.g. ``ExecutionConfig.compiler_options``)."""
  state_sh = state_shardings(state, mesh)

  def step_under_mesh(state, batch):  # the model reads the mesh for its sharding hints
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return train_step(state, batch)

  return jax.jit(step_under_mesh, in_shardings=(state_sh, batch_sharding(mesh)),
                 out_shardings=(state_sh, replicated(mesh)), donate_argnums=0,
                 compiler_options=compiler_options or None)
