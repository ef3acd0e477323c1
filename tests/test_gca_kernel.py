"""The Mosaic TPU GCA kernels (TPU interpret mode on CPU) and the XLA path vs a float64 numpy oracle.

The oracle below is written from docs/method.md with numpy only: forward, the per-pick softmax
(with the exact +1 of softmax_one), dq, dk/dv scatter-added over repeated picks, and dW. The
kernels run under ``InterpretParams(out_of_bounds_reads="raise")``, so a DMA outside an array
fails the test. Shapes are a covering set, not a cartesian product, so the file stays short.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import Mesh

from pallas_kernels.gca import gca_attention
from pallas_kernels.gca.tpu_op import gca_tpu as gca_pallas
from pallas_kernels.gca.block_sizes import BlockSizes, check_vmem, default_block_sizes, vmem_bytes
from pallas_kernels.gca.tpu import Dims, dkv_grid, query_grid
from pallas_kernels.gca.tpu_op import plan
from pallas_kernels.gca.sharding import gca_attention_sharded

# --------------------------------------------------------------------------------------------
# float64 numpy oracle
# --------------------------------------------------------------------------------------------


def oracle(q, k_mem, v_mem, idx, w, g, softmax_one):
  """Forward and the four gradients (given cotangent g) of GCA in float64 numpy."""
  q, k_mem, v_mem, w, g = (np.asarray(x, np.float64) for x in (q, k_mem, v_mem, w, g))
  idx = np.asarray(idx)
  b_, c_, nq, h, d = q.shape
  kh = k_mem.shape[3]
  heads = np.arange(h) // (h // kh)  # query head -> kv head
  scale = d ** -0.5
  out, dq, dw = np.zeros_like(q), np.zeros_like(q), np.zeros_like(w)
  dk, dv = np.zeros_like(k_mem), np.zeros_like(v_mem)
  for b in range(b_):
    for c in range(c_):
      for i in range(idx.shape[2]):
        m = idx[b, c, i]
        kc = k_mem[b, m][:, heads]  # S, H, D
        vc = v_mem[b, m][:, heads]
        s = np.einsum("qhd,shd->hqs", q[b, c], kc) * scale
        mx = s.max(-1, keepdims=True)
        if softmax_one:
          mx = np.maximum(mx, 0.0)
        e = np.exp(s - mx)
        p = e / (e.sum(-1, keepdims=True) + (np.exp(-mx) if softmax_one else 0.0))
        o = np.einsum("hqs,shd->qhd", p, vc)
        out[b, c] += w[b, c, i] * o
        gb = g[b, c]  # Q, H, D
        dw[b, c, i] = np.sum(gb * o)
        dp = np.einsum("qhd,shd->hqs", gb, vc)
        delta = np.einsum("qhd,qhd->hq", gb, o)[..., None]
        ds = w[b, c, i] * p * (dp - delta)
        dq[b, c] += scale * np.einsum("hqs,shd->qhd", ds, kc)
        dkc = scale * np.einsum("hqs,qhd->shd", ds, q[b, c])
        dvc = w[b, c, i] * np.einsum("hqs,qhd->shd", p, gb)
        for hh in range(h):
          dk[b, m, :, heads[hh]] += dkc[:, hh]
          dv[b, m, :, heads[hh]] += dvc[:, hh]
  return out, (dq, dk, dv, dw)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_inputs(seed, b, c, nq, s, k, h, kh, d, m, dtype, *, dup=False, zero=False):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((b, c, nq, h, d)) * 1.5
  km = rng.standard_normal((b, m, s, kh, d))
  vm = rng.standard_normal((b, m, s, kh, d))
  idx = rng.integers(0, m, (b, c, k))
  if dup:  # every row picks chunk 0 twice, and one row picks a single chunk K times
    idx[..., :2] = 0
    idx[0, 0, :] = m - 1
  w = rng.random((b, c, k)) + 0.1
  if zero:  # zero-weight picks, including a row whose only weighted pick is duplicated
    w[..., -1] = 0.0
  w = w / w.sum(-1, keepdims=True)
  g = rng.standard_normal((b, c, nq, h, d))
  cast = lambda x: jnp.asarray(x, dtype)
  return (cast(q), cast(km), cast(vm), jnp.asarray(idx, jnp.int32), jnp.asarray(w, jnp.float32),
          cast(g))


def run(fn, q, km, vm, idx, w, g):
  """Output and the four gradients of <fn(...), g>, in one jitted call."""

  def f(q, km, vm, w):
    out = fn(q, km, vm, idx, w)
    return jnp.sum(out.astype(jnp.float32) * g.astype(jnp.float32)), out

  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(q, km, vm, w)
  return out, grads


def assert_close(name, got, want, dtype):
  """Error within rtol of the array's scale: bf16 inputs/outputs carry ~3 significant digits."""
  got = np.asarray(jnp.asarray(got, jnp.float32), np.float64)
  scale = max(np.max(np.abs(want)), 1.0)  # floor: an exactly-zero gradient vs f32 rounding
  rtol = 3e-2 if dtype == jnp.bfloat16 else 2e-5
  err = np.max(np.abs(got - want)) / scale
  assert np.all(np.isfinite(got)), f"{name}: non-finite values"
  assert err <= rtol, f"{name}: max error {err:.2e} of scale {scale:.3g} > {rtol:.0e}"


def check(fn, case, softmax_one, seed=0, **flags):
  b, c, nq, s, k, h, kh, d, m, dtype = case
  q, km, vm, idx, w, g = make_inputs(seed, b, c, nq, s, k, h, kh, d, m, dtype, **flags)
  out, grads = run(fn, q, km, vm, idx, w, g)
  # The oracle sees exactly the (rounded) inputs the kernel saw.
  want_out, want_grads = oracle(q.astype(jnp.float32), km.astype(jnp.float32),
                                vm.astype(jnp.float32), idx, w, g.astype(jnp.float32), softmax_one)
  assert out.dtype == dtype and out.shape == q.shape
  assert_close("out", out, want_out, dtype)
  for name, got, want in zip(("dq", "dk_mem", "dv_mem", "dw"), grads, want_grads):
    assert got.shape == want.shape, name
    assert_close(name, got, want, dtype)
  return grads


CHECKED = pltpu.InterpretParams(out_of_bounds_reads="raise")


def pallas(softmax_one, **kw):
  return lambda *a: gca_attention(*a, softmax_one=softmax_one, impl="pallas", platform="tpu",
                                  interpret=CHECKED, **kw)


def xla(softmax_one):
  return lambda *a: gca_attention(*a, softmax_one=softmax_one, impl="xla")


F32, BF16 = jnp.float32, jnp.bfloat16
# (B, C, Q, S, K, H, KH, D, M, dtype): covers B {1,2}, C {1,5}, Q and S {1,7,63,64,65,128},
# K {1,3,8}, H/KH {1,2}, D {64,128,256}, float32 and bfloat16; Q != S in most rows.
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 64, 1, F32),
    (2, 5, 7, 7, 3, 4, 2, 64, 6, F32),
    (1, 5, 65, 64, 8, 2, 2, 128, 9, BF16),
    (2, 1, 64, 63, 3, 2, 1, 64, 4, F32),
    (1, 1, 128, 65, 1, 2, 1, 128, 2, F32),
    (1, 5, 63, 128, 8, 1, 1, 64, 7, BF16),
    (2, 5, 7, 1, 3, 2, 2, 128, 3, F32),
    (1, 1, 64, 7, 3, 2, 1, 256, 3, BF16),
]


@pytest.mark.parametrize("case, softmax_one", [(c, i % 2 == 1) for i, c in enumerate(CASES)],
                         ids=lambda x: "x".join(map(str, x[:9])) if isinstance(x, tuple) else str(x))
def test_pallas_matches_oracle(case, softmax_one):
  check(pallas(softmax_one), case, softmax_one)


@pytest.mark.parametrize("softmax_one", [False, True])
def test_pallas_duplicate_and_zero_weight_picks(softmax_one):
  """Repeated picks add their dk/dv; zero-weight picks change nothing but keep their exact dW."""
  case = (2, 5, 16, 15, 3, 2, 1, 64, 4, F32)
  dq, dk, dv, dw = check(pallas(softmax_one), case, softmax_one, dup=True, zero=True)
  # A zero-weight pick must not leak gradient into a chunk that only it picked.
  b, c, nq, s, k, h, kh, d, m, dtype = case
  q, km, vm, idx, w, g = make_inputs(0, *case[:9], dtype)
  idx = idx.at[:, :, -1].set(m - 1).at[:, :, :-1].set(0)  # chunk m-1: only zero-weight picks
  w = w.at[:, :, -1].set(0.0)
  out, (_, dk, dv, _) = run(pallas(softmax_one), q, km, vm, idx, w, g)
  assert np.all(np.asarray(dk[:, m - 1]) == 0) and np.all(np.asarray(dv[:, m - 1]) == 0)
  assert np.all(np.asarray(dk[:, 1:m - 1]) == 0)  # never picked
  out_without = run(pallas(softmax_one), q, km, vm, idx.at[:, :, -1].set(0), w, g)[0]
  np.testing.assert_array_equal(np.asarray(out), np.asarray(out_without))


def test_pallas_blocks_pad_chunks_and_split_heads():
  """Blocks that do not divide the shape: forward 2 and dq 3 query chunks per step over C=5
  (padded to 6), 2 memory chunks per dk/dv step over M=5 (padded to 6), one of 2 kv heads per
  step; the numbers are the oracle's."""
  bs = BlockSizes(block_c_fwd=2, block_c_dq=3, block_m_dkv=2, block_kh=1)
  fn = lambda *a: gca_pallas(*a, softmax_one=True, block_sizes=bs, interpret=CHECKED)
  check(fn, (1, 5, 9, 8, 3, 4, 2, 64, 5, F32), True, dup=True)


def test_block_sizes_plan_and_vmem():
  """The paper shape's plan and VMEM footprint against hand-computed numbers."""
  dims, bs = plan((4, 259, 64, 12, 64), (4, 260, 64, 12, 64), 8, 2, default_block_sizes("TPU v5 lite"))
  assert dims == Dims(b=4, c=259, cp=264, kh=12, r=64, d=64, mp=260, sp=64, k=8, itemsize=2)
  assert query_grid(dims, bs.block_c_fwd, bs.block_kh) == (4, 1, 33)  # 132 steps, not 99,456
  assert dkv_grid(dims, bs.block_m_dkv, bs.block_kh) == (4, 1, 65)  # M=260 in blocks of 4
  # forward, block_c=8: q and out blocks (8*12 tiles of [64, 128] bf16 = 16 KiB) and the lse block
  # (8*8 tiles of [16, 128] f32 = 8 KiB) double-buffered; two 2-slot k/v buffers (2*12 tiles of
  # 16 KiB each); the f32 accumulator (8*12 tiles of 32 KiB); w (8 tiles of 4 KiB), twice.
  kib = 2 * (2 * 96 * 16 + 64 * 8 + 8 * 4) + 2 * 24 * 16 + 96 * 32
  assert vmem_bytes("fwd", dims, 8, 12) == kib * 1024
  check_vmem(dims, bs, "v5e")  # the defaults fit v5e's 16 MiB
  too_big = dataclasses.replace(bs, block_c_dq=16)  # 28.9 MiB: fits v6e's 32 MiB, not v5e's 16
  check_vmem(dims, too_big, "v6e")
  with pytest.raises(ValueError, match=r"block_c_dq=16 .* over the 16 MiB scoped limit of v5e"):
    check_vmem(dims, too_big, "v5e")
  with pytest.raises(ValueError, match="block_kh=5 must divide"):
    plan((1, 2, 8, 4, 64), (1, 3, 8, 4, 64), 2, 4, BlockSizes(block_kh=5))
  with pytest.raises(ValueError, match="block_m_dkv=0"):
    BlockSizes(block_m_dkv=0)


@pytest.mark.parametrize("case, softmax_one", [(CASES[1], True), (CASES[2], False),
                                               (CASES[3], False), (CASES[5], True)])
def test_xla_matches_oracle(case, softmax_one):
  check(xla(softmax_one), case, softmax_one, dup=True, zero=True)


# --------------------------------------------------------------------------------------------
# out-of-range picks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("bad", [-1, 4])
def test_out_of_range_picks_raise_eagerly(impl, bad):
  q, km, vm, idx, w, _ = make_inputs(0, 1, 2, 8, 8, 2, 1, 1, 64, 4, F32)
  with pytest.raises(ValueError, match=r"outside \[0, M=4\)"):
    gca_attention(q, km, vm, idx.at[0, 1, 0].set(bad), w, impl=impl, platform="tpu",
                  interpret=True)


def test_out_of_range_picks_raise_under_jit_in_checked_mode():
  q, km, vm, idx, w, _ = make_inputs(0, 1, 2, 8, 8, 2, 1, 1, 64, 4, F32)
  fn = jax.jit(lambda i: gca_attention(q, km, vm, i, w, impl="pallas", platform="tpu",
                                       interpret=True))
  with pytest.raises(Exception, match=r"outside \[0, M=4\)"):
    jax.block_until_ready(fn(idx.at[0, 0, 1].set(7)))


def test_out_of_range_picks_poison_their_chunk_when_compiled():
  """Unchecked compiled calls: the bad chunk's output is NaN, the others stay exact."""
  q, km, vm, idx, w, _ = make_inputs(0, 1, 2, 8, 8, 2, 1, 1, 64, 4, F32)
  out = jax.jit(lambda i: gca_attention(q, km, vm, i, w, impl="xla"))(idx.at[0, 1, 0].set(-3))
  want, _ = oracle(q, km, vm, idx, w, np.zeros(q.shape), False)
  assert np.all(np.isnan(np.asarray(out[0, 1])))
  np.testing.assert_allclose(np.asarray(out[0, 0]), want[0, 0], rtol=1e-5, atol=1e-5)


def test_kernel_out_of_bounds_block_is_caught_by_tpu_interpreter():
  """Below the guard: the kernel's own DMA of a chunk id >= M is an error, not a silent read."""
  q, km, vm, idx, w, _ = make_inputs(0, 1, 1, 8, 8, 1, 1, 1, 64, 2, F32)
  params = pltpu.InterpretParams(out_of_bounds_reads="raise")
  with pytest.raises(Exception, match="(?i)out.of.bounds"):
    jax.block_until_ready(gca_pallas(q, km, vm, idx.at[0, 0, 0].set(5), w, interpret=params))
  pltpu.reset_tpu_interpret_mode_state()


# --------------------------------------------------------------------------------------------
# dispatch and sharding
# --------------------------------------------------------------------------------------------


def test_pallas_on_cpu_needs_interpret():
  q, km, vm, idx, w, _ = make_inputs(0, 1, 1, 8, 8, 1, 1, 1, 64, 2, F32)
  with pytest.raises(ValueError, match="interpret=True"):
    gca_attention(q, km, vm, idx, w, impl="pallas")


def test_sharded_pallas_on_8_devices():
  """Batch over (data, fsdp), heads over tensor: forward and all gradients vs the oracle."""
  devices = np.array(jax.devices()[:8])
  assert devices.size == 8, "tests/conftest.py must give 8 host CPU devices"
  mesh = Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  fn = lambda *a: gca_attention_sharded(*a, mesh=mesh, softmax_one=True, impl="pallas",
                                        platform="tpu", interpret=True)
  check(fn, (4, 2, 9, 8, 3, 4, 2, 64, 3, F32), True)


# --------------------------------------------------------------------------------------------
# TPU AOT compile (needs libtpu; see benchmarks/gca_kernel_aot.py)
# --------------------------------------------------------------------------------------------


@pytest.mark.tpu_aot
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install -r requirements-tpu.txt)")
def test_tpu_aot_compiles_forward_and_backward():
  from benchmarks.gca_kernel_aot import compile_case

  for topology in ("v5e:2x2", "v5p:2x2x1", "v6e:2x2"):
    rec = compile_case(topology, batch=4, n_chunks=16, backward=True)
    assert rec["ok"], rec.get("error")
    assert rec["memory"]["temp_size_in_bytes"] > 0 and rec["cost"]["flops"] > 0


def test_roofline_model_uses_the_kernels_accounting():
  """benchmarks/gca_kernel_model.py: the v5e forward row against a hand count of its DMAs."""
  from benchmarks.gca_kernel_model import build

  row = next(r for r in build()["rows"] if r["kernel"] == "tpu" and r["variant"] == "new"
             and r["chip"] == "v5e" and r["shape"] == "paper" and r["pass"] == "fwd")
  picks = 4 * 264 * 8  # C=259 padded to 264 (blocks of 8), K=8, B=4
  nbytes = (2 * 4 * 264 * 12 * 64 * 64 * 2  # q in, out back
            + picks * 2 * 12 * 64 * 64 * 2  # the picked k and v chunk, all 12 heads
            + picks * 12 * 64 * 4 + 4 * 264 * 8 * 4)  # lse out, w in
  flops = picks * 12 * 2 * (2 * 64 * 64 * 64)
  assert row["grid_steps"] == 4 * 33 and row["bytes"] == nbytes and row["flops"] == flops
  assert row["roofline_s"] == max(nbytes / 819e9, flops / 197e12)
  assert row["modeled_s"] == row["roofline_s"] + 132 * 0.35e-6
