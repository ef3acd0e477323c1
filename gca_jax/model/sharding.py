"""Activation sharding hints: active only under a mesh context (``jax.set_mesh``).

Without a mesh (single device, tests) every hint is a no-op, so the model stays a plain
function; under a mesh the hints pin the batch dimension of hidden states and logits to the
data axes so XLA never gathers a full-batch activation (e.g. the tied LM head's logits).
"""

from __future__ import annotations

import jax


def active_mesh():
  """The abstract mesh of the current ``jax.set_mesh`` context, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x, *logical):
  """``with_sharding_constraint`` from logical axis names (``gca_jax.parallel.RULES``)."""
  mesh = active_mesh()
  if mesh is None:
    return x
  from gca_jax.parallel import logical_to_spec
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical, x.shape, mesh))
