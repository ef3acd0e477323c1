"""AOT-compiles the TPU GCA kernels for v5e, v5p and v6e topologies from a CPU host (needs libtpu).

Proves the Mosaic kernels lower and fit (VMEM, SMEM) with each generation's default block sizes
on real TPU generations without a TPU, and records XLA's memory and cost analysis plus each
kernel's VMEM footprint (``block_sizes.vmem_bytes``). The kernels carry a ``pl.CostEstimate`` so the cost
model sees their flops and bytes. Per device the shape is the paper's training step: B=4 rows of
C=259 query chunks (1036 query chunks), Q=S=64, H=KH=12, D=64, K=8, M=260 memory chunks, bf16;
the batch is sharded over every device of the topology.

  JAX_PLATFORMS=cpu python benchmarks/gca_kernel_aot.py [--out benchmarks/results/gca_kernel_tpu_aot.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from launch.aot import topology_devices  # noqa: E402
from pallas_kernels.gca.tpu_op import gca_tpu as gca_pallas  # noqa: E402
from pallas_kernels.gca.block_sizes import SCOPED_VMEM, default_block_sizes, generation, vmem_bytes  # noqa: E402
from pallas_kernels.gca.tpu_op import plan  # noqa: E402

PAPER = dict(n_chunks=259, q_len=64, seq=64, heads=12, kv_heads=12, head_dim=64, top_k=8, n_mem=260)
TOPOLOGIES = ("v5e:2x2", "v5p:2x2x1", "v6e:2x2")


def _fn(mesh, block_sizes, backward):
  """The kernel sharded over batch ("data"); with backward, the gradient of a scalar loss."""
  act, picks = P("data"), P("data")
  kernel = functools.partial(gca_pallas, block_sizes=block_sizes, interpret=False)
  sharded = jax.shard_map(kernel, mesh=mesh, in_specs=(act, act, act, picks, picks),
                          out_specs=act, check_vma=False)
  if not backward:
    return sharded
  loss = lambda q, k, v, i, w: jnp.sum(sharded(q, k, v, i, w).astype(jnp.float32) ** 2)
  return jax.grad(loss, argnums=(0, 1, 2, 4))


def compile_case(topology: str, *, batch: int = 4, n_chunks: int = PAPER["n_chunks"],
                 backward: bool = False) -> dict:
  """Compiles forward (or forward+backward) for ``topology``; ``batch`` is per device."""
  p = dict(PAPER, n_chunks=n_chunks)
  rec = dict(topology=topology, backward=backward, per_device_batch=batch, **p)
  try:
    devices = topology_devices(topology)  # libtpu loaded side by side with other processes
    rec.update(device_kind=devices[0].device_kind, n_devices=len(devices))
    mesh = Mesh(devices, ("data",))
    block_sizes = default_block_sizes(devices[0].device_kind)
    rec["block_sizes"] = dict(vars(block_sizes))
    dims, bs = plan((batch, p["n_chunks"], p["q_len"], p["heads"], p["head_dim"]),
                    (batch, p["n_mem"], p["seq"], p["kv_heads"], p["head_dim"]), p["top_k"], 2,
                    block_sizes)
    rec["vmem_bytes"] = {name: vmem_bytes(name, dims, blk, bs.block_kh) for name, blk in
                         (("fwd", bs.block_c_fwd), ("dq", bs.block_c_dq), ("dkv", bs.block_m_dkv))}
    rec["scoped_vmem_limit_bytes"] = SCOPED_VMEM.get(generation(devices[0].device_kind))
    b = batch * len(devices)
    shard = NamedSharding(mesh, P("data"))
    sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=shard)
    q = sds((b, p["n_chunks"], p["q_len"], p["heads"], p["head_dim"]), jnp.bfloat16)
    mem = sds((b, p["n_mem"], p["seq"], p["kv_heads"], p["head_dim"]), jnp.bfloat16)
    idx = sds((b, p["n_chunks"], p["top_k"]), jnp.int32)
    w = sds((b, p["n_chunks"], p["top_k"]), jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(_fn(mesh, block_sizes, backward)).lower(q, mem, mem, idx, w).compile()
    rec["compile_s"] = round(time.perf_counter() - t0, 2)
    mem_stats = compiled.memory_analysis()
    rec["memory"] = {k: getattr(mem_stats, k) for k in dir(mem_stats)
                     if k.endswith("_in_bytes") and not k.startswith("_")}
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    keep = ("flops", "transcendentals", "bytes accessed", "optimal_seconds")
    rec["cost"] = {k: float(v) for k, v in cost.items() if k in keep}
    rec["ok"] = True
  except Exception as e:  # a failed compile is a result worth recording
    rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
  return rec


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results/gca_kernel_tpu_aot.json")
  args = parser.parse_args()
  import libtpu  # noqa: F401  (fail early and clearly without it)
  from importlib.metadata import version
  results = [compile_case(t, backward=bw) for t in TOPOLOGIES for bw in (False, True)]
  report = dict(
      what="AOT compile of the fused GCA Pallas kernel (per-device paper shape)",
      host=dict(platform=platform.platform(), python=platform.python_version(),
                cpu_count=os.cpu_count()),
      versions=dict(jax=jax.__version__, jaxlib=version("jaxlib"), libtpu=version("libtpu")),
      results=results)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  for r in results:
    print(r["topology"], "fwd+bwd" if r["backward"] else "fwd", "ok" if r["ok"] else r["error"][:300],
          r.get("compile_s"), r.get("memory", {}).get("temp_size_in_bytes"), r.get("cost"))


if __name__ == "__main__":
  main()
