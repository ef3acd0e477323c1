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


def triton_calls(text: str) -> list[tuple[str, int]]:
  """(kernel name, launched programs = grid_x * grid_y * grid_z) of each Triton call, in order."""
  calls = []
  for target, config in _CALL.findall(_IR.sub("", text)):
    if target != CUSTOM_CALL:
      continue
    name = re.search(r'name = "([^"]+)"', config).group(1)
    grid = [int(g) for g in re.findall(r"grid_[xyz] = (\d+)", config)]
    calls.append((name, math.prod(grid)))
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


# (B, C, Q, H, KH, D, M, S, K): GQA with padded Q and S (2 dk/dv key tiles); the paper's shape.
SHAPES = [(2, 3, 7, 4, 2, 128, 5, 65, 3), (4, 259, 64, 12, 12, 64, 260, 64, 8)]


@pytest.mark.parametrize("shape", SHAPES, ids=["gqa_padded", "paper"])
def test_forward_and_backward_lower_to_triton_calls_with_modeled_grids(shape):
  text = export_cuda(_loss_and_grads(True), *_specs(*shape, jnp.bfloat16))
  calls = dict(triton_calls(text))
  assert sorted(calls) == sorted(KERNELS) and len(triton_calls(text)) == 3, calls
  b, c, nq, h, kh, d, m, s, k = shape
  model = cost_model(dict(batch=b, n_chunks=c, q_len=nq, seq=s, heads=h, kv_heads=kh, head_dim=d,
                          top_k=k, n_mem=m, dtype_bytes=2), "fwd+bwd")
  assert {n: model["parts"][n.removeprefix("gca_gpu_")]["grid_steps"] for n in KERNELS} == calls
  assert model["grid_steps"] == sum(calls.values())


@pytest.mark.parametrize("impl", ["pallas", "auto"])
def test_forward_alone_lowers_to_one_triton_call_and_xla_to_none(impl):
  """impl="auto" on GPU is the kernel (api.AUTO, by the roofline model); "xla" has no kernel."""
  specs = _specs(1, 2, 64, 2, 2, 64, 3, 64, 2, jnp.float32)
  text = export_cuda(lambda *a: gca_attention(*a, impl=impl, platform="gpu"), *specs)
  assert [name for name, _ in triton_calls(text)] == ["gca_gpu_fwd"]
  assert triton_calls(export_cuda(lambda *a: gca_attention(*a, impl="xla"), *specs)) == []


def _drt_train_step_text(gca_impl: str) -> str:
  """The tiny DRT experiment's train step, exported for CUDA with ``execution.gca_impl``."""
  from flax import nnx  # noqa: PLC0415

  from gca_jax.config import ExecutionConfig, ModelConfig, OptimConfig  # noqa: PLC0415
  from gca_jax.model import build_model  # noqa: PLC0415
  from gca_jax.train.optim import make_optimizer  # noqa: PLC0415
  from gca_jax.train.state import init_state  # noqa: PLC0415
  from gca_jax.train.step import make_train_step  # noqa: PLC0415

  cfg = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64,
                    lower_layers=0, upper_layers=(1, 1), encoder_layers=1, chunk_size=4, top_k=2,
                    window=10)
  execution = ExecutionConfig(gca_impl=gca_impl, gca_platform="gpu" if gca_impl != "xla" else "")
  tx = make_optimizer(OptimConfig(), 10)
  box = {}

  def init():
    box["graphdef"], state = init_state(build_model(cfg, rngs=nnx.Rngs(0), execution=execution),
                                        tx, 0)
    return state

  state = jax.eval_shape(init)
  batch = {"tokens": jax.ShapeDtypeStruct((2, 30), jnp.int32)}
  return export_cuda(make_train_step(box["graphdef"], tx), state, batch)


def test_drt_train_step_lowers_with_the_gpu_kernel():
  """execution.gca_impl="pallas", gca_platform="gpu": each GCA layer of the train step runs the
  three Triton kernels (forward, dq, dk/dv) once; with gca_impl="xla" there are none."""
  calls = [name for name, _ in triton_calls(_drt_train_step_text("pallas"))]
  assert sorted(calls) == sorted(KERNELS * 2), calls  # one GCA in each of the 2 upper blocks
  assert triton_calls(_drt_train_step_text("xla")) == []


def test_cost_model_bytes_and_flops_by_hand():
  """A 2-chunk, 1-pick, 1-head shape with no padding (Q=S=D=16), counted by hand."""
  shape = dict(batch=1, n_chunks=2, q_len=16, seq=16, heads=1, kv_heads=1, head_dim=16, top_k=1,
               n_mem=2, dtype_bytes=2)
  fwd = cost_model(shape, "fwd")
  tile = 16 * 16 * 2  # one [16, 16] bf16 tile: a chunk's q, out, k or v
  # q read + out written (2 chunks each), lse written (2 x 16 f32), idx + w (2 x 8 B), and the
  # picked k and v chunks (2 picks x 2 tiles)
  assert fwd["bytes"] == 2 * 2 * tile + 2 * 16 * 4 + 2 * 8 + 2 * 2 * tile
  assert fwd["flops"] == 2 * 2 * (2 * 16 * 16 * 16)  # 2 picks x (QK^T, PV) x 2*16^3
  assert fwd["grid_steps"] == 2 and fwd["launches"] == 1
  full = cost_model(shape, "fwd+bwd")
  dq = 3 * 2 * tile + 2 * 2 * 16 * 4 + 2 * 8 + 2 * 2 * tile  # q, dO, dq; lse, delta; picks; k, v
  dkv = 4 * 2 * tile + 2 * 2 * tile + 2 * 2 * 16 * 4 + 2 * 16  # k, v, dk, dv; q, dO; stats; map
  dw = 2 * 16 * 4 + 2 * 4  # delta read, dw written
  assert full["bytes"] == fwd["bytes"] + dq + dkv + dw
  assert full["grid_steps"] == 2 + 2 + 2 and full["launches"] == 4
  with pytest.raises(ValueError, match="lacks"):
    cost_model({"batch": 1}, "fwd")
  with pytest.raises(ValueError, match="pass_"):
    cost_model(shape, "bwd")
