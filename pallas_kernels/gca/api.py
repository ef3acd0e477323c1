"""The one public GCA op: ``gca_attention``, dispatching to an implementation."""

from __future__ import annotations

import functools

import jax
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float, Int

from pallas_kernels.gca.checks import guard_picks
from pallas_kernels.gca.reference import gca_reference

IMPLS = ("xla", "pallas", "auto")
PLATFORMS = ("tpu", "gpu")
# What impl="auto" runs on each platform: a Pallas kernel only where a measurement or the roofline
# model (benchmarks/gca_kernel_model.py) says it beats the XLA path. GPU, by the model (no GPU
# measurement yet; benchmarks/gpu_check.py makes one): the XLA path writes and re-reads the
# gathered chunks [B,C,K,S,KH,D] of k and v and the float32 logits: 53 GB fwd+bwd at the paper
# shape vs the Triton kernel's 6.0 GB (gpu_cost.cost_model), 8.9x; the gather alone (3 passes
# over the picked chunks, 2.4 GB) outweighs the kernel's whole forward (1.9 GB). TPU, by the
# model too (benchmarks/results/gca_kernel_model.json, summary "v5e fwd+bwd": kernel "tpu"
# variant "new" 7.5 ms vs kernel "xla" 65 ms modeled at the paper shape; 8-9x on v5p and v6e).
AUTO = {"tpu": "pallas", "gpu": "pallas"}


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


def backend_platform() -> str:
  """The platform being compiled for: the mesh's abstract device when a mesh context is set (AOT
  for a TPU topology from a CPU host), else the default backend; "cuda"/"rocm" read as "gpu"."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  backend = getattr(device, "platform", None) or jax.default_backend()
  return "gpu" if backend in ("cuda", "rocm") else backend


def resolve(impl: str, platform: str | None = None, interpret=False) -> tuple[str, str | None]:
  """Returns ("xla", None) or ("pallas", "tpu" | "gpu"): what ``gca_attention`` runs, for which chip.

  ``platform`` None means the backend's (or the mesh's devices'). Naming a platform explicitly
  selects that chip's kernel on any host: with ``interpret`` it runs here, without it the call
  lowers for that chip (``jax.export(..., platforms=["cuda"])``, TPU AOT).
  """
  if impl not in IMPLS:
    raise ValueError(f"gca_attention: unknown impl={impl!r}; use one of {IMPLS}")
  if platform is not None and platform not in PLATFORMS:
    raise ValueError(f"gca_attention: unknown platform={platform!r}; use None or one of {PLATFORMS}")
  chip = platform or backend_platform()
  if impl == "xla":
    return "xla", None
  if impl == "auto":
    return ("pallas", chip) if AUTO.get(chip) == "pallas" else ("xla", None)
  if chip not in PLATFORMS:
    raise ValueError(
        f"gca_attention(impl='pallas'): the backend is {chip!r}, which has no Pallas GCA kernel; "
        f"name the kernel with platform='tpu' or 'gpu' (and interpret=True to run it on this "
        f"host), or use impl='xla' / 'auto'")
  return "pallas", chip


def resolve_impl(impl: str, interpret=False, platform: str | None = None) -> str:
  """"xla" or "pallas": the implementation ``gca_attention`` would run (see ``resolve``)."""
  return resolve(impl, platform, interpret)[0]


def gca_pallas(q, k_mem, v_mem, idx, w, *, softmax_one: bool = False, platform: str = "tpu",
               block_sizes=None, interpret=False):
  """The fused kernel of ``platform`` on public-layout arrays (no pick guard, no dispatch)."""
  if platform == "gpu":
    from pallas_kernels.gca.gpu import gca_gpu  # noqa: PLC0415  (Triton/Mosaic GPU import cost)
    return gca_gpu(q, k_mem, v_mem, idx, w, softmax_one=softmax_one, block_sizes=block_sizes,
                   interpret=interpret)
  from pallas_kernels.gca.tpu_op import gca_tpu  # noqa: PLC0415
  return gca_tpu(q, k_mem, v_mem, idx, w, softmax_one=softmax_one, block_sizes=block_sizes,
                 interpret=interpret)


def gca_attention(
    q: Float[Array, "B C Q H D"],
    k_mem: Float[Array, "B M S KH D"],
    v_mem: Float[Array, "B M S KH D"],
    idx: Int[Array, "B C K"],
    w: Float[Array, "B C K"],
    *,
    softmax_one: bool = False,
    impl: str = "xla",
    platform: str | None = None,
    interpret: bool | pltpu.InterpretParams = False,
    block_sizes=None,
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
    impl: "xla" (pure jnp), "pallas" (a fused kernel) or "auto" (``AUTO``: the kernel where it
      wins, XLA elsewhere; on TPU and GPU the kernel, on GPU by the roofline model).
    platform: which Pallas kernel, "tpu" or "gpu"; None takes the backend (or the mesh's devices).
    interpret: run the Pallas kernel in interpret mode (CPU tests): True, or an
      ``InterpretParams`` (e.g. ``out_of_bounds_reads="raise"``). Also turns on the run-time pick
      check.
    block_sizes: the kernel's tile choices (the platform's ``BlockSizes``); None: per-chip defaults.
  """
  _check_shapes(q, k_mem, v_mem, idx, w)
  impl, chip = resolve(impl, platform, interpret)
  idx, w = guard_picks(idx, w, k_mem.shape[1], checked=bool(interpret))
  if impl == "pallas":
    return gca_pallas(q, k_mem, v_mem, idx, w, softmax_one=softmax_one, platform=chip,
                      block_sizes=block_sizes, interpret=interpret)
  # Remat: the backward pass recomputes the gathered chunks and the logits instead of storing
  # K*S logits per query row for every layer.
  fn = jax.checkpoint(functools.partial(gca_reference, softmax_one=softmax_one))
  return fn(q, k_mem, v_mem, idx, w)
