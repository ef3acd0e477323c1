"""Sharded train step on 8 host CPU devices equals the one-device step; shardings are real."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gca_jax import parallel
from gca_jax.config import ConfigError, MeshConfig, ModelConfig, OptimConfig
from gca_jax.model import build_model
from gca_jax.train.optim import make_optimizer
from gca_jax.train.state import init_state
from gca_jax.train.step import make_train_step

TINY = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, lower_layers=0,
                   upper_layers=(1,), encoder_layers=1, chunk_size=4, top_k=2, window=10)
P = jax.sharding.PartitionSpec


def leaf(variable):
  """The one leaf (array or sharding) inside an NNX Variable."""
  return jax.tree_util.tree_leaves(variable)[0]


MESHES = [MeshConfig(data=8), MeshConfig(data=2, fsdp=2, tensor=2), MeshConfig(data=1, fsdp=4, tensor=2)]


@pytest.fixture(scope="module")
def setup():
  model = build_model(TINY, rngs=nnx.Rngs(0))
  # eps well above tiny gradients: the first Adam step is ~lr*sign(g), which would amplify
  # float rounding in near-zero gradients into lr-sized parameter differences.
  tx = make_optimizer(OptimConfig(lr=1e-2, warmup_steps=0, eps=1e-3), total_steps=10)
  graphdef, state = init_state(model, tx, seed=1)
  step = make_train_step(graphdef, tx)
  tokens = jax.random.randint(jax.random.PRNGKey(2), (8, 24), 1, TINY.vocab_size - 1)
  batch = {"tokens": tokens}
  ref_state, ref_metrics = jax.jit(step)(state, batch)
  # Host copies: the sharded step donates its input state.
  return step, jax.device_get(state), batch, jax.device_get((ref_state, ref_metrics))


@pytest.mark.parametrize("mesh_cfg", MESHES, ids=lambda m: f"d{m.data}f{m.fsdp}t{m.tensor}")
def test_sharded_step_matches_one_device(setup, mesh_cfg):
  step, state, batch, (ref_state, ref_metrics) = setup
  mesh = parallel.make_mesh(mesh_cfg)
  sharded = parallel.jit_train_step(step, state, mesh)
  state_in = jax.device_put(state, parallel.state_shardings(state, mesh))
  batch_in = jax.device_put(batch, parallel.batch_sharding(mesh))
  new_state, metrics = sharded(state_in, batch_in)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-4)
  got, want = jax.tree_util.tree_leaves(new_state.params), jax.tree_util.tree_leaves(ref_state.params)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
  assert int(new_state.step) == 1
  want_spec = leaf(parallel.state_shardings(state, mesh).params["embed"]["table"]).spec
  assert leaf(new_state.params["embed"]["table"]).sharding.spec == want_spec


def test_params_and_opt_state_really_sharded():
  model = build_model(TINY, rngs=nnx.Rngs(0))
  tx = make_optimizer(OptimConfig(), total_steps=10)
  _, state = init_state(model, tx, seed=0)
  mesh = parallel.make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  sh = parallel.state_shardings(state, mesh)
  p = sh.params
  assert leaf(p["embed"]["table"]).spec == P("tensor", None)
  assert leaf(p["encoder"][0]["attn"]["q"]["kernel"]).spec == P("fsdp", "tensor")
  assert leaf(p["encoder"][0]["attn"]["o"]["kernel"]).spec == P("tensor", "fsdp")
  assert leaf(p["groups"][0][0]["mlp"]["down"]["kernel"]).spec == P("tensor", "fsdp")
  assert leaf(p["final_norm"]["scale"]).spec == P("fsdp")
  assert sh.step.spec == P() and sh.rng.spec == P()
  # Adam's moments mirror the params (the o kernel is square: matched by path, not shape).
  specs = [s.spec for s in jax.tree_util.tree_leaves(sh.opt_state)]
  assert specs.count(P("tensor", "fsdp")) >= 2 * 4
  placed = jax.device_put(state.params, parallel.state_shardings(state.params, mesh))
  q = leaf(placed["encoder"][0]["attn"]["q"]["kernel"])
  assert q.addressable_shards[0].data.shape == (32 // 4, 32 // 2)


def _registered_models():
  from experiments.registry import list_experiments
  return list_experiments()


@pytest.mark.parametrize("name", _registered_models())
def test_every_parameter_declares_its_logical_axes(name):
  """Each parameter of every registered model names one logical axis (or None) per dimension
  where it is created, and every name is in the rules table."""
  from experiments.registry import get_experiment
  from gca_jax.logical import RULES
  exp = get_experiment(name)
  params = nnx.state(nnx.eval_shape(lambda: build_model(exp.model, rngs=nnx.Rngs(0))), nnx.Param)
  assert parallel.undeclared_params(params) == []
  leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert len(leaves) > 5
  for var in leaves:
    assert all(n is None or n in RULES for n in parallel.declared_axes(var))


def test_undeclared_parameter_is_found():
  """A parameter created without axes is reported (so renaming or adding one cannot silently
  leave a weight replicated) and gets no sharding but replication."""
  model = build_model(TINY, rngs=nnx.Rngs(0))
  model.extra = nnx.Param(jnp.zeros((32, 32)))
  params = nnx.state(model, nnx.Param)
  assert parallel.undeclared_params(params) == ["['extra']"]
  mesh = parallel.make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  assert leaf(parallel.state_shardings(params, mesh)["extra"]).spec == P()


def test_non_dividing_dimension_replicates():
  mesh = parallel.make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
  spec = parallel.logical_to_spec(("vocab", "embed"), (63, 32), mesh)
  assert spec == P(None, "fsdp")
  assert parallel.batch_sharding(mesh).spec == P("fsdp")
  mesh = parallel.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  assert parallel.batch_sharding(mesh).spec == P(("data", "fsdp"))


def test_make_mesh_sizes():
  assert dict(parallel.make_mesh(MeshConfig(data=-1, tensor=2)).shape) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert dict(parallel.make_mesh(MeshConfig(data=1, fsdp=-1)).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  mesh = parallel.make_mesh(MeshConfig(data=2, fsdp=2, tensor=1), devices=jax.devices()[:4])
  assert mesh.devices.size == 4
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("cfg", [MeshConfig(data=3), MeshConfig(data=2, fsdp=2, tensor=1),
                                 MeshConfig(data=-1, fsdp=3), MeshConfig(data=4, fsdp=4)])
def test_bad_mesh_sizes_raise(cfg):
  with pytest.raises(ConfigError, match="devices"):
    parallel.make_mesh(cfg)
