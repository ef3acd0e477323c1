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
  flat1 = jax.tree_util.tree_leaves_with_path(g1)
  flat2 = dict(jax.tree_util.tree_leaves_with_path(g2))
  for path, a in flat1:
    b = flat2[path]
    scale = max(float(jnp.abs(a).max()), 1e-6)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5 * scale + 1e-8,
                               err_msg=jax.tree_util.keystr(path))
  # the retriever really is trained through the kernel's dW
  assert float(jnp.abs(g2["lmk_norms"][0]["scale"][...]).max()) > 0
