"""The Pallas Triton GCA kernel in interpret mode vs the float64 numpy oracle of test_gca_op.py.

Forward and all four gradients (dq, dk, dv, dw) over a covering set of shapes (not a cartesian
product, to stay near a minute): B {1,2}, C {1,5}, Q and S each over {7, 63, 64, 65}, K {1,3,8},
GQA (H=4, KH=2) and H=KH, D {64,128}, float32/bfloat16, softmax_one on/off; every case with
K >= 2 has a repeated pick and a zero-weight pick (``_inputs``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.gca import BlockSizes, gca_attention
from pallas_kernels.gca.gpu_block_sizes import GpuBlockSizes
from pallas_kernels.gca.gpu_kernels import reverse_map
from test_gca_op import _close, _inputs, np_gca

# (B, C, Q, H, KH, D, M, S, K, dtype, softmax_one, block sizes: None or ExecutionConfig's dict)
CASES = [
    (1, 1, 7, 4, 2, 64, 3, 63, 1, jnp.float32, True, None),
    (2, 5, 63, 4, 4, 64, 6, 64, 3, jnp.float32, False, None),
    (1, 5, 64, 4, 2, 128, 7, 65, 8, jnp.float32, True, None),  # Sp=128: 2 dk/dv key tiles
    (2, 1, 65, 4, 4, 128, 4, 7, 3, jnp.bfloat16, False, None),
    (1, 5, 65, 4, 2, 64, 6, 64, 8, jnp.bfloat16, True,
     {"block_q": 16, "dkv_block_k": 16}),  # 5 row tiles per head, 4 dk/dv key tiles
    (2, 5, 7, 4, 4, 64, 5, 65, 8, jnp.float32, True, None),
]


def _run(q, k_mem, v_mem, idx, w, softmax_one, block_sizes=None):
  fn = lambda q_, k_, v_, w_: gca_attention(q_, k_, v_, idx, w_, softmax_one=softmax_one,
                                            impl="pallas", platform="gpu", interpret=True,
                                            block_sizes=block_sizes)
  return jax.vjp(jax.jit(fn), q, k_mem, v_mem, w)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}C{}Q{}H{}KH{}D{}M{}S{}K{}".format(*c[:9]))
def test_forward_and_gradients_match_oracle(case):
  *shape, dtype, softmax_one, block_sizes = case
  q, k_mem, v_mem, idx, w = _inputs(hash(tuple(shape)) % 2**31, *shape, dtype=dtype)
  out, vjp = _run(q, k_mem, v_mem, idx, w, softmax_one, block_sizes)
  dout = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), dtype)
  grads = vjp(dout)
  assert out.dtype == dtype and out.shape == q.shape
  assert [g.dtype for g in grads] == [dtype] * 3 + [jnp.float32]
  f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)  # the bf16-rounded inputs
  ref = np_gca(f64(q), f64(k_mem), f64(v_mem), idx, f64(w), softmax_one=softmax_one,
               dout=f64(dout))
  tol = 1e-5 if dtype == jnp.float32 else 3e-2  # bf16: eps 2^-8 in outputs and P@V operands
  for name, got, want in zip(("out", "dq", "dk_mem", "dv_mem", "dw"), (out, *grads), ref):
    _close(got, want, tol, name)


def test_zero_weight_and_unpicked_chunks_are_exact_zeros():
  """A zero-weight pick leaves the output bitwise unchanged wherever it points, and a chunk picked
  only with weight zero (or never) gets dk = dv = 0 exactly, while its dw is <dO, o_i> != 0."""
  q, k_mem, v_mem, _, w = _inputs(5, 1, 2, 7, 4, 2, 64, 4, 7, 3)
  idx = jnp.asarray([[[0, 1, 2], [1, 0, 2]]], jnp.int32)
  w = w.at[:, :, 2].set(0.0)
  fn = jax.jit(lambda ix, q_, k_, v_, w_: gca_attention(
      q_, k_, v_, ix, w_, softmax_one=True, impl="pallas", platform="gpu", interpret=True))
  out = fn(idx, q, k_mem, v_mem, w)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(fn(idx.at[:, :, 2].set(3), q, k_mem,
                                                                   v_mem, w)))
  _, vjp = jax.vjp(lambda *a: fn(idx, *a), q, k_mem, v_mem, w)
  _, dk, dv, dw = vjp(jnp.ones_like(out))
  for chunk in (2, 3):
    assert np.all(np.asarray(dk[:, chunk]) == 0) and np.all(np.asarray(dv[:, chunk]) == 0)
  assert np.all(np.asarray(dk[:, :2]) != 0)
  assert np.all(np.asarray(dw[:, :, 2]) != 0)


def test_reverse_map_against_hand_layout():
  """Picks grouped by (batch row, chunk) in pick order; the most-picked chunks scheduled first."""
  idx = jnp.asarray([[[2, 0], [2, 2]], [[1, 1], [0, 1]]], jnp.int32)  # B=2, C=2, K=2, M=3
  w = jnp.arange(8, dtype=jnp.float32).reshape(2, 2, 2)
  sched, offs, chunk, slot, w_sorted = (np.asarray(a) for a in reverse_map(idx, w, 3))
  # keys b*M+m: 0 once, 2 three times (batch 0); 3 once, 4 three times (batch 1)
  np.testing.assert_array_equal(offs, [0, 1, 1, 4, 5, 8, 8])
  np.testing.assert_array_equal(chunk, [0, 0, 1, 1, 1, 0, 0, 1])
  np.testing.assert_array_equal(slot, [1, 0, 0, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(w_sorted, [1, 0, 2, 3, 6, 4, 5, 7])
  np.testing.assert_array_equal(sched, [2, 4, 0, 3, 1, 5])  # counts 3, 3, 1, 1, 0, 0


def test_out_of_range_picks_are_refused():
  q, k_mem, v_mem, idx, w = _inputs(2, 1, 2, 7, 4, 2, 64, 3, 7, 2)
  bad = idx.at[0, 1, 0].set(3)  # M = 3
  kw = dict(softmax_one=False, impl="pallas", platform="gpu", interpret=True)
  with pytest.raises(ValueError, match=r"outside \[0, M=3\)"):
    gca_attention(q, k_mem, v_mem, bad, w, **kw)
  with pytest.raises(Exception, match=r"outside \[0, M=3\)"):  # traced: the run-time check
    jax.block_until_ready(jax.jit(lambda ix: gca_attention(q, k_mem, v_mem, ix, w, **kw))(bad))


def test_bad_block_sizes_are_clear_errors():
  q, k_mem, v_mem, idx, w = _inputs(3, 1, 1, 7, 2, 2, 64, 2, 7, 1)
  with pytest.raises(TypeError, match="GpuBlockSizes"):
    gca_attention(q, k_mem, v_mem, idx, w, impl="pallas", platform="gpu", interpret=True,
                  block_sizes=BlockSizes())
  with pytest.raises(ValueError, match=r"\['block_k'\] do not exist"):
    gca_attention(q, k_mem, v_mem, idx, w, impl="pallas", platform="gpu", interpret=True,
                  block_sizes={"block_k": 64})
  with pytest.raises(ValueError, match="power of two"):
    GpuBlockSizes(block_q=48)


def test_gpu_check_dry_run_and_no_gpu_message(tmp_path, capsys):
  """benchmarks/gpu_check.py: --dry-run runs the whole check (kernel vs XLA, JSON) on this host;
  without a GPU and without --dry-run it stops with status 2 and says what to do."""
  import json  # noqa: PLC0415

  from benchmarks import gpu_check  # noqa: PLC0415

  assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
  rec = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
  assert rec["correct"] and rec["interpret"] and rec["speedup"] > 0
  assert max(rec["max_rel_error"].values()) < 1e-4 and set(rec["max_rel_error"]) == {
      "loss", "dq", "dk", "dv", "dw"}
  assert rec["model"]["kernel_bytes"] < rec["model"]["xla_bytes"]
  capsys.readouterr()
  assert gpu_check.main(["--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "no CUDA GPU" in err and "--dry-run" in err
