"""Evaluation outputs: JSON lists, a Markdown table and a PNG plot against length."""

from __future__ import annotations

import json
import math
import os

from etils import epath


def _fmt(v) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def write_json(path, rows: list[dict]) -> epath.Path:
  """Writes ``rows`` (a JSON list) atomically."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(rows, indent=1) + "\n")
  os.replace(tmp, path)
  return path


def markdown_table(rows: list[dict], columns: list[str]) -> str:
  """A Markdown table of ``columns`` (missing values as '-'; not-run rows show the reason)."""
  cols = list(columns) + (["reason"] if any(r.get("not_run") for r in rows) else [])
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
  return "\n".join(lines) + "\n"


def percent_change(values: list[float]) -> list[float]:
  """Each value's change from the first, in percent (``100 * (v / v[0] - 1)``): a perplexity
  curve on this scale shows a 0.3% drift as flat, where a tight absolute axis makes it a rise."""
  if not values:
    return []
  if not values[0] > 0:
    raise ValueError(f"percent change needs a positive first value, got {values[0]}")
  return [100.0 * (v / values[0] - 1.0) for v in values]


def plot(path, rows: list[dict], y: str, title: str, *, log_y: bool = False,
         relative: bool = False) -> epath.Path | None:
  """``y`` against length (log x axis), one line per model; not-run lengths are skipped.
  ``relative`` plots each line's percent change from its shortest length instead, on an axis
  of at least +-3%."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(6, 4))
  lim = 3.0
  for name in sorted({str(r.get("model", "")) for r in rows}):
    pts = sorted((r["length"], r[y]) for r in rows
                 if str(r.get("model", "")) == name and r.get(y) is not None and not r.get("not_run")
                 and not (isinstance(r[y], float) and math.isnan(r[y])))
    if pts and relative:
      pts = list(zip([p[0] for p in pts], percent_change([p[1] for p in pts])))
      lim = max(lim, *(abs(p[1]) * 1.2 for p in pts))
    if pts:
      ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name or None)
  ax.set_xscale("log", base=2)
  if relative:
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-lim, lim)
  elif log_y:
    ax.set_yscale("log")
  ax.set_xlabel("length (tokens)")
  ax.set_ylabel(f"{y} change from the shortest length (%)" if relative else y)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend()
  fig.tight_layout()
  fig.savefig(str(path), dpi=100)
  plt.close(fig)
  return path


def write_passkey(out_dir, variant: str, rows: list[dict]) -> dict:
  """``passkey_<variant>.json`` / ``.md`` / ``.png`` under ``out_dir``."""
  out = epath.Path(out_dir)
  j = write_json(out / f"passkey_{variant}.json", rows)
  md = out / f"passkey_{variant}.md"
  md.write_text(f"# Passkey ({variant})\n\n" + markdown_table(
      rows, ["model", "length", "samples", "accuracy", "exact_match", "seconds"]))
  png = plot(out / f"passkey_{variant}.png", rows, "accuracy", f"passkey ({variant}) accuracy")
  return {"json": str(j), "markdown": str(md), "plot": str(png)}


def write_ppl(out_dir, rows: list[dict]) -> dict:
  """``ppl.json`` / ``ppl.md`` / ``ppl.png`` under ``out_dir``."""
  out = epath.Path(out_dir)
  j = write_json(out / "ppl.json", rows)
  md = out / "ppl.md"
  md.write_text("# Perplexity\n\n" + markdown_table(rows, ["model", "length", "windows", "tokens", "ppl", "seconds"]))
  png = plot(out / "ppl.png", rows, "ppl", "perplexity", relative=True)
  return {"json": str(j), "markdown": str(md), "plot": str(png)}
