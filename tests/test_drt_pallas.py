"""The DRT model with each Pallas GCA kernel (TPU and GPU, interpret mode) gives the XLA path's
loss and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gca_jax.config import ExecutionConfig, ModelConfig
from gca_jax.model import DRT
from gca_jax.train.step import loss_fn


def assert_grads_close(want, got, label=""):
  """Every gradient leaf of ``got`` within 2e-5 of ``want``'s largest entry."""
  got = dict(jax.tree_util.tree_leaves_with_path(got))
  for path, a in jax.tree_util.tree_leaves_with_path(want):
    scale = max(float(jnp.abs(a).max()), 1e-6)
    np.testing.assert_allclose(np.asarray(got[path]), np.asarray(a), atol=2e-5 * scale + 1e-8,
                               err_msg=f"{label} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_drt_pallas_interpret_matches_xla_loss_and_grads(platform):
  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=32, lower_layers=1,
                    upper_layers=(1, 1), encoder_layers=1, chunk_size=7, top_k=3, window=16, gumbel=False)
  toks = jax.random.randint(jax.random.PRNGKey(0), (2, 40), 1, 62)
  results = []
  for impl, interpret in (("xla", False), ("pallas", True)):
    run = ExecutionConfig(gca_impl=impl, gca_platform=platform if impl == "pallas" else "",
                          gca_interpret=interpret)
    model = DRT(cfg, rngs=nnx.Rngs(0), execution=run)
    graphdef, params = nnx.split(model, nnx.Param)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, graphdef, {"tokens": toks}, None, train=False)
    results.append((float(loss), grads))
  (l1, g1), (l2, g2) = results
  np.testing.assert_allclose(l2, l1, rtol=1e-6)
  assert_grads_close(g1, g2)
  # the retriever really is trained through the kernel's dW
  assert float(jnp.abs(g2["lmk_norms"][0]["scale"][...]).max()) > 0


def live_kernels(jaxpr, live=None) -> int:
  """pallas_calls whose results reach the jaxpr's ``live`` outputs (all by default), looking
  into remat/pjit bodies: what XLA keeps after dead-code elimination."""
  live_vars = {id(v) for v, keep in zip(jaxpr.outvars, live or [True] * len(jaxpr.outvars)) if keep}
  count = 0
  for e in reversed(jaxpr.eqns):
    outs = [id(v) in live_vars for v in e.outvars]
    if not any(outs):
      continue
    inner = e.params.get("jaxpr")
    inner = getattr(inner, "jaxpr", inner)
    if e.primitive.name in ("remat2", "checkpoint", "pjit", "closed_call") and hasattr(inner, "eqns"):
      count += live_kernels(inner, outs)
    count += e.primitive.name == "pallas_call"
    live_vars |= {id(v) for v in e.invars if not hasattr(v, "val")}
  return count


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_remat_save_gca_runs_no_forward_kernel_twice(platform):
  """remat with remat_policy="save_gca" keeps the kernel's output and log-sum-exp: the gradient
  program holds one forward kernel per GCA layer (two with "nothing": the recomputation), and
  both give the XLA path's gradients without remat."""
  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=32, lower_layers=1,
                    upper_layers=(1, 1), encoder_layers=1, chunk_size=7, top_k=3, window=16, gumbel=False)
  toks = jax.random.randint(jax.random.PRNGKey(1), (2, 40), 1, 62)

  def grads(**kw):
    model = DRT(cfg, rngs=nnx.Rngs(0), execution=ExecutionConfig(**kw))
    graphdef, params = nnx.split(model, nnx.Param)
    f = jax.grad(lambda p: loss_fn(p, graphdef, {"tokens": toks}, None, train=False)[0])
    return f(params), jax.make_jaxpr(f)(params).jaxpr

  want, _ = grads(gca_impl="xla")
  kernels = {}
  for policy in ("save_gca", "nothing"):
    got, jaxpr = grads(gca_impl="pallas", gca_platform=platform, gca_interpret=True, remat=True,
                       remat_policy=policy)
    kernels[policy] = live_kernels(jaxpr)
    assert_grads_close(want, got, policy)
  n_gca = sum(cfg.upper_layers)  # forward, dq and dk/dv kernels per GCA layer
  assert kernels == {"save_gca": 3 * n_gca, "nothing": 4 * n_gca}, kernels
