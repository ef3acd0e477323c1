"""Roofline model of GCA at the paper shape: the TPU kernels (new and old design), the XLA path and,
if present, the Pallas GPU kernel. Modeled, not measured: no accelerator was used.

For every (kernel, chip, shape, pass): ``roofline_s = max(bytes / HBM bandwidth, flops / peak)``
from the chips' public figures (``CHIPS``), and ``modeled_s = roofline_s + grid_steps *
per-step overhead`` (0.35 us per grid step for Mosaic TPU). Grid steps come from the kernels' own
grid functions (``tpu.query_grid`` / ``tpu.dkv_grid`` on ``tpu_op.plan``), bytes and flops from
``tpu.cost`` (the numbers the kernels hand to ``pl.CostEstimate``). The old TPU design (one grid
step per pick per kv head, removed) and the XLA path are explicit formulas below.

  python benchmarks/gca_kernel_model.py [--out benchmarks/results/gca_kernel_model.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pallas_kernels.gca import tpu  # noqa: E402
from pallas_kernels.gca.block_sizes import default_block_sizes  # noqa: E402
from pallas_kernels.gca.tpu_op import plan  # noqa: E402

TPU_STEP_S = 0.35e-6  # Pallas TPU cost of one grid step (pipeline prologue/epilogue, DMA issue)
# HBM bandwidth (bytes/s) and dense bf16 peak (flop/s), with where each figure is published.
CHIPS = {
    "v5e": dict(hbm=819e9, peak=197e12, kind="TPU v5 lite",
                source="Google Cloud TPU docs, TPU v5e system architecture"),
    "v5p": dict(hbm=2765e9, peak=459e12, kind="TPU v5",
                source="Google Cloud TPU docs, TPU v5p system architecture"),
    "v6e": dict(hbm=1640e9, peak=918e12, kind="TPU v6 lite",
                source="Google Cloud TPU docs, TPU v6e (Trillium) system architecture"),
    "h100": dict(hbm=3.35e12, peak=989e12, kind="NVIDIA H100 SXM",
                 source="NVIDIA H100 Tensor Core GPU datasheet (SXM, bf16 dense)"),
    "h200": dict(hbm=4.8e12, peak=989e12, kind="NVIDIA H200 SXM",
                 source="NVIDIA H200 Tensor Core GPU datasheet (SXM, bf16 dense)"),
}
TPUS, GPUS = ("v5e", "v5p", "v6e"), ("h100", "h200")
# Per device in the paper's training step: B=4 rows x C=259 query chunks, Q=S=64, H=KH=12, D=64,
# K=8 of M=260 memory chunks, bf16. "gqa": a grouped-query variant (4 query heads per kv head).
SHAPES = {
    "paper": dict(b=4, c=259, q=64, h=12, d=64, m=260, s=64, kh=12, k=8, itemsize=2),
    "gqa": dict(b=4, c=259, q=64, h=16, d=128, m=260, s=64, kh=4, k=8, itemsize=2),
}


def _row(kernel, chip, shape, pass_, steps, nbytes, flops, step_s, launch_s=0.0, **extra):
  """One model row; ``launch_s``: fixed time outside the grid steps (GPU kernel launches)."""
  c = CHIPS[chip]
  roof = max(nbytes / c["hbm"], flops / c["peak"])
  modeled = roof + steps * step_s + launch_s
  return dict(kernel=kernel, chip=chip, shape=shape, **{"pass": pass_}, grid_steps=int(steps),
              bytes=int(nbytes), flops=int(flops), per_step_s=step_s, roofline_s=roof,
              modeled_s=modeled, modeled_over_roofline=round(modeled / roof, 3), **extra)


def _plan(p, chip):
  q = (p["b"], p["c"], p["q"], p["h"], p["d"])
  mem = (p["b"], p["m"], p["s"], p["kh"], p["d"])
  return plan(q, mem, p["k"], p["itemsize"], default_block_sizes(CHIPS[chip]["kind"]))


def tpu_new(p, chip):
  """Steps, bytes, flops of the new kernels per pass: (fwd, dq, dkv) from the kernels' own
  grid and cost functions."""
  dims, bs = _plan(p, chip)
  steps = dict(fwd=tpu.query_grid(dims, bs.block_c_fwd, bs.block_kh),
               dq=tpu.query_grid(dims, bs.block_c_dq, bs.block_kh),
               dkv=tpu.dkv_grid(dims, bs.block_m_dkv, bs.block_kh))
  out = {}
  for name, grid in steps.items():
    n = 1
    for g in grid:
      n *= g
    out[name] = dict(steps=n, **tpu.cost(name, dims))
  return out, bs


def tpu_old(p, chip):
  """LEGACY design (the kernels this change replaced), kept for the record: grid (B, KH,
  C/block_c, block_c*K) for fwd and dq, i.e. one step per pick per kv head, and (B, KH, C*K)
  for dk/dv; bytes as in its pl.CostEstimate (k/v fetched per pick; dk/dv re-read per pick)."""
  dims, _ = _plan(p, chip)
  b, c, kh, k, isz = p["b"], p["c"], p["kh"], p["k"], p["itemsize"]
  r, sp, d = dims.r, dims.sp, dims.d
  picks = b * kh * c * k  # block_c=1 on v5e, 2 elsewhere: the step count is the same
  q_bytes = b * c * kh * r * d * isz
  kv = picks * 2 * sp * d * isz
  mm = 2 * r * sp * d * picks
  return dict(fwd=dict(steps=picks, flops=2 * mm, bytes=2 * q_bytes + kv),
              dq=dict(steps=picks, flops=3 * mm, bytes=3 * q_bytes + kv),
              dkv=dict(steps=picks, flops=4 * mm,
                       bytes=picks * (2 * r * d * isz + 2 * sp * d * isz)
                       + 2 * b * p["m"] * kh * sp * d * isz))


def xla_cost(p):
  """The XLA path (``reference.py`` under jax.checkpoint), assuming XLA materialises each einsum
  output and fuses the elementwise work into its consumer: the gather reads and writes the
  picked k/v (then the einsums read them again), f32 logits written and read, bf16
  probabilities written and read, f32 per-pick outputs written and read by the w-mix. fwd+bwd:
  the forward twice (primal, remat) and a backward of twice the forward's bytes and flops."""
  b, c, q, h, d, s, kh, k, isz = (p[x] for x in ("b", "c", "q", "h", "d", "s", "kh", "k", "itemsize"))
  picked = b * c * k * s * kh * d * isz
  logits = b * c * k * h * q * s
  rows = b * c * q * h * d * isz
  fwd_bytes = 6 * picked + logits * (2 * 4 + 2 * isz) + 2 * b * c * k * h * q * d * 4 + 2 * rows
  fwd_flops = 4 * b * c * k * h * q * s * d
  return {"fwd": (fwd_bytes, fwd_flops), "fwd+bwd": (4 * fwd_bytes, 4 * fwd_flops)}


def gpu_rows(p, shape):
  """Rows of the Pallas GPU kernel from ``pallas_kernels.gca.gpu.cost_model``, if it exists."""
  try:
    from pallas_kernels.gca.gpu import cost_model  # noqa: PLC0415
  except ImportError as e:
    return [], f"no GPU rows: pallas_kernels.gca.gpu.cost_model is not available ({e})"
  shape_dict = dict(batch=p["b"], n_chunks=p["c"], q_len=p["q"], heads=p["h"], head_dim=p["d"],
                    n_mem=p["m"], seq=p["s"], kv_heads=p["kh"], top_k=p["k"],
                    dtype_bytes=p["itemsize"])
  rows = []
  try:
    for pass_ in ("fwd", "fwd+bwd"):
      cm = cost_model(shape_dict, pass_)
      for chip in GPUS:
        launches = cm.get("launches", 0) * cm.get("launch_s", 0.0)
        rows.append(_row("gpu", chip, shape, pass_, cm["grid_steps"], cm["bytes"], cm["flops"],
                         cm["per_step_s"], launch_s=launches))
  except Exception as e:  # a helper's model that does not take this shape: say so, do not fail
    return [], f"no GPU rows: cost_model raised {type(e).__name__}: {e}"
  return rows, "GPU rows from pallas_kernels.gca.gpu.cost_model"


def build() -> dict:
  rows, notes = [], []
  for shape, p in SHAPES.items():
    for chip in TPUS:
      new, bs = tpu_new(p, chip)
      old = tpu_old(p, chip)
      for variant, per in (("new", new), ("old", old)):
        extra = dict(variant=variant)
        if variant == "new":
          extra["block_sizes"] = dict(vars(bs))
        for pass_, parts in (("fwd", ("fwd",)), ("fwd+bwd", ("fwd", "dq", "dkv"))):
          tot = {x: sum(per[q][x] for q in parts) for x in ("steps", "bytes", "flops")}
          rows.append(_row("tpu", chip, shape, pass_, tot["steps"], tot["bytes"], tot["flops"],
                           TPU_STEP_S, **extra))
    for chip in TPUS + GPUS:
      for pass_, (nb, fl) in xla_cost(p).items():
        rows.append(_row("xla", chip, shape, pass_, 0, nb, fl, 0.0))
    g, note = gpu_rows(p, shape)
    rows += g
    notes.append(f"{shape}: {note}")
  return dict(rows=rows, notes=notes)


def _find(rows, **kw):
  return next(r for r in rows if all(r.get(k) == v for k, v in kw.items()))


def summary(rows) -> dict:
  """Per TPU chip at the paper shape: new vs old vs XLA, modeled seconds and ratios."""
  out = {}
  for chip in TPUS:
    for pass_ in ("fwd", "fwd+bwd"):
      new = _find(rows, kernel="tpu", variant="new", chip=chip, shape="paper", **{"pass": pass_})
      old = _find(rows, kernel="tpu", variant="old", chip=chip, shape="paper", **{"pass": pass_})
      xla = _find(rows, kernel="xla", chip=chip, shape="paper", **{"pass": pass_})
      out[f"{chip} {pass_}"] = dict(
          new_modeled_s=new["modeled_s"], new_over_roofline=new["modeled_over_roofline"],
          old_modeled_s=old["modeled_s"], old_over_roofline=old["modeled_over_roofline"],
          xla_modeled_s=xla["modeled_s"], xla_over_new=round(xla["modeled_s"] / new["modeled_s"], 2),
          steps_new=new["grid_steps"], steps_old=old["grid_steps"])
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results/gca_kernel_model.json")
  args = parser.parse_args()
  import jax  # noqa: PLC0415
  res = build()
  report = dict(
      what="roofline model of GCA kernels (modeled, not measured)",
      formula="roofline_s = max(bytes / hbm_bytes_per_s, flops / peak_flops); "
              "modeled_s = roofline_s + grid_steps * per_step_s",
      per_step_s=dict(tpu=TPU_STEP_S, xla="0 (launch and fusion overheads not modeled: in XLA's favour)",
                      gpu="from pallas_kernels.gca.gpu.cost_model (plus its launches * launch_s)"),
      chips={k: dict(hbm_bytes_per_s=v["hbm"], peak_bf16_flops=v["peak"], source=v["source"])
             for k, v in CHIPS.items()},
      shapes=SHAPES,
      caveats=["bytes are logical: on TPU a D=64 lane dimension occupies 128-lane tiles in HBM, "
               "so DMAs of the kernel layout may move up to 2x these bytes (XLA's too)",
               "the roofline assumes MXU peak; the kernels' per-head matmuls are [R, Sp, D] = "
               "64x64x64 at the paper shape, which fill half of a 128-wide MXU pass",
               "layout moves outside the kernels (public <-> kernel layout, a transpose of q, k, "
               "v, out and their gradients) and the reverse-map sort are not counted"],
      machine=dict(platform=platform.platform(), python=platform.python_version()),
      versions=dict(jax=jax.__version__),
      notes=res["notes"],
      summary=summary(res["rows"]),
      rows=res["rows"])
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  for k, v in report["summary"].items():
    print(k, json.dumps(v))
  for n in res["notes"]:
    print(n)


if __name__ == "__main__":
  main()
