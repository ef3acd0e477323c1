"""The GPU kernel lowers for CUDA from this CPU host (``jax.export(..., platforms=["cuda"])``).

Lowering runs the Pallas -> Triton IR translation of every kernel (the step that rejects
non-power-of-two tensors, unsupported ops or bad indexing); the module must then hold one Triton
custom call per kernel, with the launch grid ``gpu_kernels.grids`` (and so ``cost_model``)
counts. Compiling the Triton IR to PTX needs a CUDA device and is ``benchmarks/gpu_check.py``'s job.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.gca import gca_attention
from pallas_kernels.gca.gpu import CUSTOM_CALL
from pallas_kernels.gca.gpu_cost import cost_model

KERNELS = ("gca_gpu_fwd", "gca_gpu_dq", "gca_gpu_dkv")
_IR = re.compile(r'ir = "(?:[^"\\]|\\.)*"')  # a Triton call's serialized kernel module
_CALL = re.compile(r"custom_call @(\S+?)\([^)]*\) \{mhlo.backend_config = \{([^}]*)\}")


def export_cuda(fn, *args) -> str:
  """The StableHLO text of ``fn`` exported for CUDA, with the Triton custom call allowed."""
  exported = jax.export.export(
      jax.jit(fn), platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(CUSTOM_CALL)])(*args)
  return exported.mlir_module()


def triton_calls(text: str) -> dict[str, int]:
  """{kernel name: launched programs (grid_x * grid_y * grid_z)} of the module's Triton calls."""
  calls = {}
  for target, config in _CALL.findall(_IR.sub("", text)):
    if target != CUSTOM_CALL:
      continue
    name = re.search(r'name = "([^"]+)"', config).group(1)
    grid = [int(g) for g in re.findall(r"grid_[xyz] = (\d+)", config)]
    calls[name] = math.prod(grid)
  return calls


def _specs(b, c, nq, h, kh, d, m, s, k, dtype):
  act = jax.ShapeDtypeStruct((b, c, nq, h, d), dtype)
  mem = jax.ShapeDtypeStruct((b, m, s, kh, d), dtype)
  return (act, mem, mem, jax.ShapeDtypeStruct((b, c, k), jnp.int32),
          jax.ShapeDtypeStruct((b, c, k), jnp.float32))


def _loss_and_grads(softmax_one):
  def loss(q, k_mem, v_mem, idx, w):
    out = gca_attention(q, k_mem, v_mem, idx, w, softmax_one=softmax_one, impl="pallas",
                        platform="gpu")
    return jnp.sum(out.astype(jnp.float32) ** 2)
  return jax.value_and_grad(loss, argnums=(0, 1, 2, 4))


# (B, C, Q, H, KH, D, M, S, K): GQA with padded Q and S; the paper's per-device shape.
SHAPES = [(2, 3, 7, 4, 2, 128, 5, 63, 3), (4, 259, 64, 12, 12, 64, 260, 64, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=["gqa_padded", "paper"])
def test_forward_and_backward_lower_to_triton_calls_with_modeled_grids(shape):
  text = export_cuda(_loss_and_grads(True), *_specs(*shape, jnp.bfloat16))
  calls = triton_calls(text)
  assert sorted(calls) == sorted(KERNELS), calls
  b, c, nq, h, kh, d, m, s, k = shape
  model = cost_model(dict(batch=b, n_chunks=c, q_len=nq, seq=s, heads=h, kv_heads=kh, head_dim=d,
                          top_k=k, n_mem=m, dtype_bytes=2), "fwd+bwd")
  assert {n: model["parts"][n.removeprefix("gca_gpu_")]["grid_steps"] for n in KERNELS} == calls
  assert model["grid_steps"] == sum(calls.values())


def test_forward_alone_lowers_to_one_triton_call_and_xla_to_none():
  specs = _specs(1, 2, 64, 2, 2, 64, 3, 64, 2, jnp.float32)
  text = export_cuda(lambda *a: gca_attention(*a, impl="pallas", platform="gpu"), *specs)
  assert list(triton_calls(text)) == ["gca_gpu_fwd"]
  assert triton_calls(export_cuda(lambda *a: gca_attention(*a, impl="xla"), *specs)) == {}
