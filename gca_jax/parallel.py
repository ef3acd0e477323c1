"""Device mesh, logical-axis rules and shardings for params, train state and batches.

Mesh axes are ("data", "fsdp", "tensor"). Arrays name their dimensions with logical axes
(``batch``, ``embed``, ``heads`` ...) and ``RULES`` maps each logical axis to mesh axes: the batch
splits over data x fsdp, parameters are fully sharded over fsdp on their ``embed`` dimension
(FSDP / ZeRO-3) and over tensor on heads / mlp / vocab; the tied embedding table is only
split on vocab (see ``RULES``). A dimension that does not divide by its
mesh axes stays replicated. Mesh axes are ``Auto`` so XLA propagates shardings through the model.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from gca_jax.config import ConfigError, MeshConfig

AXES = ("data", "fsdp", "tensor")

# The one logical-axis rules table: logical axis -> mesh axis, tuple of axes, or None.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "chunks": None,
    "heads": "tensor",
    "kv_heads": "tensor",
    "embed": "fsdp",
    # The tied embedding table stays whole along embed: sharded on embed over fsdp, XLA
    # contracts the LM head over fsdp and computes full-batch logits [B, T, V] on every chip.
    "table_embed": None,
    "mlp": "tensor",
    "vocab": "tensor",
}

# Logical axes of a Linear kernel [in, out], by the name of its module.
_KERNEL_AXES = {
    "q": ("embed", "heads"), "k": ("embed", "kv_heads"), "v": ("embed", "kv_heads"),
    "o": ("heads", "embed"), "gate": ("embed", "mlp"), "up": ("embed", "mlp"),
    "down": ("mlp", "embed"),
}


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


def _names(path) -> tuple[str, ...]:
  """Key names of a pytree path as strings (dict keys, attributes, list indices)."""
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(str(getattr(k, attr)))
        break
  return tuple(n for n in out if n != "value")


def logical_axes(path, shape: tuple[int, ...]) -> tuple[str | None, ...]:
  """Logical axes of the parameter at ``path`` in the NNX param tree (None: unnamed dim)."""
  names = _names(path)
  leaf = names[-1] if names else ""
  if leaf == "table" and len(shape) == 2:
    return ("vocab", "table_embed")
  if leaf == "scale" and len(shape) == 1:
    return ("embed",)
  if leaf == "kernel" and len(shape) == 2 and len(names) >= 2 and names[-2] in _KERNEL_AXES:
    return _KERNEL_AXES[names[-2]]
  return (None,) * len(shape)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
  """PartitionSpec from logical axes via ``RULES``; non-dividing or reused mesh axes replicate."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    rule = RULES.get(name) if name else None
    mesh_axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
    mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
    if not mesh_axes or dim % math.prod(mesh.shape[a] for a in mesh_axes):
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(params, mesh: Mesh):
  """NamedSharding for every parameter (arrays or ShapeDtypeStructs) of an NNX param tree."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, logical_to_spec(logical_axes(path, x.shape), x.shape, mesh)),
      params)


def state_shardings(state, mesh: Mesh):
  """Shardings for a TrainState (or any pytree holding the params and optimizer state).

  A leaf whose path ends with a parameter's path and has its shape (the parameter itself,
  Adam's mu / nu ...) gets that parameter's sharding; everything else (step, rng, counts) is
  replicated. Works for any optax state structure.
  """
  by_path = {}
  for path, x in jax.tree_util.tree_leaves_with_path(state.params):
    by_path[_names(path)] = (tuple(x.shape), logical_axes(path, x.shape))

  def one(path, x):
    names, shape = _names(path), tuple(getattr(x, "shape", ()))
    for i in range(len(names)):
      hit = by_path.get(names[i:])
      if hit is not None and hit[0] == shape:
        return NamedSharding(mesh, logical_to_spec(hit[1], shape, mesh))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Every batch array splits its leading (batch) dimension over data x fsdp."""
  return NamedSharding(mesh, logical_to_spec(("batch",), (mesh.shape["data"] * mesh.shape["fsdp"],), mesh))


def jit_train_step(train_step, state, mesh: Mesh):
  """``train_step`` jitted with state / batch shardings, replicated metrics, donated state."""
  state_sh = state_shardings(state, mesh)

  def step_under_mesh(state, batch):  # the model reads the mesh for its sharding hints
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return train_step(state, batch)

  return jax.jit(step_under_mesh, in_shardings=(state_sh, batch_sharding(mesh)),
                 out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)
