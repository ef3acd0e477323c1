"""Logical axes: the one rules table, and the sharding hints the model places on activations.

Arrays name their dimensions with logical axes (``batch``, ``embed``, ``heads`` ...); ``RULES``
maps each to mesh axes ("data", "fsdp", "tensor"). Parameters declare their logical axes where
they are created (``axes`` below, kept as ``logical_axes`` metadata on each ``nnx.Param``);
``gca_jax.parallel`` turns them into shardings with the same table. This module depends on jax
only, so the model and the trainer both import it.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import PartitionSpec as P

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

METADATA_KEY = "logical_axes"  # Param metadata naming its logical axes (not Flax's eager "out_sharding":
# that one would shard at creation and needs a mesh to build any model)


def axes(*names: str | None) -> dict:
  """Variable metadata declaring a parameter's logical axes, e.g. ``nnx.Param(x, **axes("embed"))``."""
  unknown = [n for n in names if n is not None and n not in RULES]
  if unknown:
    raise ValueError(f"unknown logical axes {unknown}; known: {sorted(RULES)}")
  return {METADATA_KEY: tuple(names)}


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh) -> P:
  """PartitionSpec from logical axes via ``RULES``; non-dividing or reused mesh axes replicate."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    rule = RULES.get(name) if name else None
    mesh_axes = (rule,) if isinstance(rule, str) else tuple(rule or ())
    mesh_axes = tuple(a for a in mesh_axes if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
    if not mesh_axes or dim % math.prod(mesh.shape[a] for a in mesh_axes):
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  return P(*spec)


def active_mesh():
  """The abstract mesh of the current ``jax.set_mesh`` / ``use_abstract_mesh`` context, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x, *names):
  """``with_sharding_constraint`` from logical axis names; a no-op without a mesh context, so
  the model stays a plain function on one device. Under a mesh the hints pin the batch dimension
  of hidden states and logits to the data axes so XLA never gathers a full-batch activation."""
  mesh = active_mesh()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))
