"""The one public GCA op: ``gca_attention``, dispatching to an implementation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float, Int

from pallas_kernels.gca import layout
from pallas_kernels.gca.block_sizes import BlockSizes, default_block_sizes
from pallas_kernels.gca.checks import guard_picks
from pallas_kernels.gca.reference import gca_reference
from pallas_kernels.gca.vjp import make_gca_kernel

IMPLS = ("xla", "pallas", "auto")


def _check_shapes(q, k_mem, v_mem, idx, w) -> None:
  if q.ndim != 5 or k_mem.ndim != 5 or v_mem.ndim != 5:
    raise ValueError(
        f"gca_attention: q must be [B,C,Q,H,D] and k_mem/v_mem [B,M,S,KH,D]; got q{q.shape}, "
        f"k_mem{k_mem.shape}, v_mem{v_mem.shape}")
  b, c, _, h, d = q.shape
  if k_mem.shape != v_mem.shape:
    raise ValueError(f"gca_attention: k_mem{k_mem.shape} and v_mem{v_mem.shape} differ")
  if k_mem.shape[0] != b or k_mem.shape[4] != d:
    raise ValueError(f"gca_attention: k_mem{k_mem.shape} does not match q{q.shape} in batch or head dim")
  kh = k_mem.shape[3]
  if h % kh:
    raise ValueError(f"gca_attention: query heads H={h} must be a multiple of kv heads KH={kh}")
  if idx.shape != w.shape or idx.shape[:2] != (b, c) or idx.ndim != 3:
    raise ValueError(f"gca_attention: idx{idx.shape} and w{w.shape} must both be [B={b}, C={c}, K]")
  if not jax.numpy.issubdtype(idx.dtype, jax.numpy.integer):
    raise ValueError(f"gca_attention: idx must be an integer array, got {idx.dtype}")


def resolve_impl(impl: str, interpret) -> str:
  """Picks the implementation: "auto" is the Pallas kernel on TPU and XLA elsewhere.

  There is no GPU kernel (see ``gpu.py``); on CPU the kernel runs only in interpret mode.
  """
  if impl not in IMPLS:
    raise ValueError(f"gca_attention: unknown impl={impl!r}; use one of {IMPLS}")
  # Under a mesh context (e.g. AOT compilation for a TPU topology from a CPU host) the target
  # platform is the mesh's, not the host's default backend.
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  backend = getattr(device, "platform", None)
  backend = backend or jax.default_backend()
  if impl == "auto":
    return "pallas" if backend == "tpu" else "xla"
  if impl == "pallas" and backend != "tpu" and not interpret:
    raise ValueError(
        f"gca_attention(impl='pallas'): the fused kernel is a Mosaic TPU kernel and the default "
        f"backend is {backend!r}; pass interpret=True (CPU testing) or use impl='xla' / 'auto'")
  return impl


def _target_device_kind() -> str:
  """The device kind being compiled for: the mesh's (AOT for a TPU topology) or the host's."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return getattr(device, "device_kind", None) or jax.devices()[0].device_kind


def gca_pallas(q, k_mem, v_mem, idx, w, *, softmax_one: bool = False,
               block_sizes: BlockSizes | None = None, interpret=False):
  """The fused kernel on public-layout arrays: pads, regroups heads, runs the custom_vjp."""
  b, c, nq, h, d = q.shape
  s, kh = k_mem.shape[2], k_mem.shape[3]
  if block_sizes is None:
    block_sizes = default_block_sizes(None if interpret else _target_device_kind())
  align = block_sizes.row_align
  bc = min(block_sizes.block_c, c)
  cp = layout.round_up(c, bc)
  kernel = make_gca_kernel(seq_len=s, n_chunks=c, softmax_one=softmax_one, block_c=bc,
                           interpret=interpret)
  idx_p, w_p = layout.pad_picks(idx.astype(jnp.int32), w.astype(jnp.float32), cp)
  out = kernel(layout.q_to_kernel(q, kh, layout.round_up(nq, align), cp),
               layout.mem_to_kernel(k_mem, layout.round_up(s, align)),
               layout.mem_to_kernel(v_mem, layout.round_up(s, align)), idx_p, w_p)
  return layout.q_from_kernel(out, c, nq, h).astype(q.dtype)


def gca_attention(
    q: Float[Array, "B C Q H D"],
    k_mem: Float[Array, "B M S KH D"],
    v_mem: Float[Array, "B M S KH D"],
    idx: Int[Array, "B C K"],
    w: Float[Array, "B C K"],
    *,
    softmax_one: bool = False,
    impl: str = "xla",
    interpret: bool | pltpu.InterpretParams = False,
) -> Float[Array, "B C Q H D"]:
  """Grouped cross attention of query chunks over their top-k picked memory chunks.

  Args:
    q: queries, one row of Q positions per query chunk.
    k_mem, v_mem: the chunk memory, S keys per chunk.
    idx: the K picked memory chunks of every query chunk (int32, in [0, M)). A pick outside
      that range raises (eagerly, or at run time when ``interpret`` is set) or, in a compiled
      non-interpret call, turns its query chunk's output into NaN (``checks.py``).
    w: the chunk weights (float32); a weight of 0 removes that pick exactly.
    softmax_one: add an implicit zero logit to each per-chunk softmax.
    impl: "xla" (pure jnp), "pallas" (fused kernel) or "auto" (Pallas on TPU, XLA elsewhere).
    interpret: run the Pallas kernel in interpret mode (CPU tests): True, or a
      ``pltpu.InterpretParams`` (e.g. ``out_of_bounds_reads="raise"``). Also turns on the
      run-time pick check.
  """
  _check_shapes(q, k_mem, v_mem, idx, w)
  impl = resolve_impl(impl, interpret)
  idx, w = guard_picks(idx, w, k_mem.shape[1], checked=bool(interpret))
  if impl == "pallas":
    return gca_pallas(q, k_mem, v_mem, idx, w, softmax_one=softmax_one, interpret=interpret)
  # Remat: the backward pass recomputes the gathered chunks and the logits instead of storing
  # K*S logits per query row for every layer.
  fn = jax.checkpoint(functools.partial(gca_reference, softmax_one=softmax_one))
  return fn(q, k_mem, v_mem, idx, w)
