"""``gca_attention`` inside a sharded model: a shard_map over batch and heads.

GCA is independent per batch row and per kv head (a query head only reads its own kv head), so
batch shards over the data-parallel axes and heads over the tensor axis with no communication.
``check_vma=False`` because a pallas_call carries no varying-manual-axes annotation.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import Mesh, PartitionSpec as P
from jaxtyping import Array, Float, Int

from pallas_kernels.gca.api import gca_attention


def _present(mesh: Mesh, axes) -> tuple[str, ...]:
  return tuple(a for a in axes if a in mesh.axis_names)


def gca_attention_sharded(
    q: Float[Array, "B C Q H D"],
    k_mem: Float[Array, "B M S KH D"],
    v_mem: Float[Array, "B M S KH D"],
    idx: Int[Array, "B C K"],
    w: Float[Array, "B C K"],
    *,
    mesh: Mesh,
    softmax_one: bool = False,
    impl: str = "auto",
    platform: str | None = None,
    interpret=False,
    block_sizes=None,
    batch_axes: tuple[str, ...] = ("data", "fsdp"),
    head_axis: str = "tensor",
) -> Float[Array, "B C Q H D"]:
  """``gca_attention`` per shard: batch over ``batch_axes``, query and kv heads over ``head_axis``.

  Axes missing from ``mesh`` are treated as unsharded. B must divide by the batch-axes size and
  KH (hence H) by the head-axis size.
  """
  batch = _present(mesh, batch_axes) or None
  heads = head_axis if head_axis in mesh.axis_names else None
  n_heads = mesh.shape[heads] if heads else 1
  if k_mem.shape[3] % n_heads:
    raise ValueError(f"gca_attention_sharded: KH={k_mem.shape[3]} kv heads do not divide over "
                     f"mesh axis {heads!r} of size {n_heads}")
  act = P(batch, None, None, heads, None)
  picks = P(batch, None, None)
  fn = functools.partial(gca_attention, softmax_one=softmax_one, impl=impl, platform=platform,
                         interpret=interpret, block_sizes=block_sizes)
  return jax.shard_map(fn, mesh=mesh, in_specs=(act, act, act, picks, picks), out_specs=act,
                       check_vma=False)(q, k_mem, v_mem, idx, w)
