"""The train state and how to make it: built, or abstract with shardings (for restoring)."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gca_jax import parallel
from gca_jax.config import Experiment
from gca_jax.model import build_model


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def init_state(model, tx: optax.GradientTransformation, seed: int):
  """(graphdef, TrainState) from a built model."""
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                              rng=jax.random.PRNGKey(seed))


def abstract_state(model_cfg, execution, seed: int, mesh, tx):
  """``(graphdef, abstract_state, shardings, target, init_fn)`` without allocating params:
  ``target`` holds ShapeDtypeStructs with shardings (what a checkpoint restores onto, or what AOT
  compiles against) and ``jax.jit(init_fn, out_shardings=shardings)()`` builds the initial state
  in place. The model runs with ``execution``; the state does not depend on it."""
  box = {}

  def init_fn():
    model = build_model(model_cfg, rngs=nnx.Rngs(seed), execution=execution)
    box["graphdef"], state = init_state(model, tx, seed)
    return state

  abstract = jax.eval_shape(init_fn)
  shardings = parallel.state_shardings(abstract, mesh)
  target = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
  return box["graphdef"], abstract, shardings, target, init_fn


def abstract_train_state(exp: Experiment, mesh, tx):
  """``abstract_state`` of an experiment's model, execution settings and seed."""
  return abstract_state(exp.model, exp.execution, exp.train.seed, mesh, tx)
