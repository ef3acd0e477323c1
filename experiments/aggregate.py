"""One report for a sweep: each run's final loss, validation ppl and passkey accuracy.

``collect(sweep_dir, runs)`` reads ``DIR/<run>/metrics.jsonl``, ``summary.json`` and
``evals/passkey_*.json`` into one row per run (runs without metrics are "not run");
``write(sweep_dir, name, rows)`` writes ``DIR/sweep_<name>.{json,md,png}``.
"""

from __future__ import annotations

import json
import os

from etils import epath

from gca_jax.evals import report
from gca_jax.train.metrics import read_metrics

BASE_COLUMNS = ["run", "status", "step", "final_loss", "val_ppl", "val_loss"]


def _read_json(path: epath.Path):
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except json.JSONDecodeError:
    return None


def passkey_key(variant: str, length: int) -> str:
  return f"passkey_{variant}@{length}"


def _passkey(run_dir: epath.Path) -> dict[str, float | None]:
  """``passkey_<variant>@<length>`` -> accuracy (None where that length was not run)."""
  out = {}
  evals = run_dir / "evals"
  paths = sorted(evals.glob("passkey_*.json")) if evals.exists() else []
  for path in paths:
    variant = path.name[len("passkey_"):-len(".json")]
    for r in _read_json(path) or []:
      if isinstance(r, dict) and "length" in r:
        out[passkey_key(variant, int(r["length"]))] = (
            None if r.get("not_run") else r.get("accuracy"))
  return out


def run_row(run_dir, run: str, experiment: str = "", overrides: list[str] = ()) -> dict:
  """The row of one run folder: last training loss, last eval row, passkey accuracies."""
  run_dir = epath.Path(run_dir)
  row = {"run": run, "experiment": experiment,
         "overrides": " ".join(o for o in overrides if not o.startswith("name=")),
         "workdir": os.fspath(run_dir)}
  metrics = read_metrics(run_dir / "metrics.jsonl")
  train = [r for r in metrics if "loss" in r]
  evals = [r for r in metrics if "eval_ppl" in r]
  if not metrics:
    return {**row, "status": "not run", "not_run": True, "reason": "not run"}
  summary = _read_json(run_dir / "summary.json")
  done = isinstance(summary, dict) and not summary.get("preempted")
  row.update(status="done" if done else "partial", step=max(r["step"] for r in metrics),
             final_loss=train[-1]["loss"] if train else None,
             val_ppl=evals[-1]["eval_ppl"] if evals else None,
             val_loss=evals[-1].get("eval_loss") if evals else None,
             val_step=evals[-1]["step"] if evals else None)
  return {**row, **_passkey(run_dir)}


def collect(sweep_dir, runs) -> list[dict]:
  """One row per ``SweepRun`` (``experiment``, ``overrides``, ``run_name``), in sweep order."""
  return [run_row(epath.Path(sweep_dir) / r.run_name, r.run_name, r.experiment, r.overrides)
          for r in runs]


def passkey_columns(rows: list[dict]) -> list[str]:
  keys = {k for r in rows for k in r if k.startswith("passkey_") and "@" in k}
  return sorted(keys, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))


def plot(path, rows: list[dict], title: str) -> epath.Path:
  """Bars of final validation ppl per run, and of passkey accuracy per run and length."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  pk = passkey_columns(rows)
  names = [r["run"] for r in rows]
  x = np.arange(len(rows))
  fig, axes = plt.subplots(1, 2 if pk else 1, figsize=(6 + (6 if pk else 0), 4 + 0.1 * len(rows)),
                           squeeze=False)
  ax = axes[0][0]
  ppl = [r.get("val_ppl") for r in rows]
  ax.bar(x, [p if p is not None else 0.0 for p in ppl], color="tab:blue")
  for i, p in enumerate(ppl):
    if p is None:
      ax.text(i, 0, "not run" if rows[i].get("not_run") else "-", ha="center", va="bottom",
              rotation=90, fontsize=8)
  ax.set_ylabel("final validation ppl")
  ax.set_title(f"{title}: validation perplexity")
  if pk:
    ax = axes[0][1]
    width = 0.8 / len(pk)
    for j, col in enumerate(pk):
      vals = [r.get(col) if r.get(col) is not None else 0.0 for r in rows]
      ax.bar(x - 0.4 + width * (j + 0.5), vals, width, label=col.removeprefix("passkey_"))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("passkey accuracy")
    ax.set_title(f"{title}: passkey accuracy")
    ax.legend(fontsize=7)
  for ax in axes[0]:
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
  fig.tight_layout()
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(str(path), dpi=100)
  plt.close(fig)
  return path


def markdown(name: str, rows: list[dict]) -> str:
  cols = BASE_COLUMNS + passkey_columns(rows) + ["overrides"]
  shown = [{k: v for k, v in r.items() if k != "not_run"} for r in rows]  # status says it
  return f"# Sweep {name}\n\n" + report.markdown_table(shown, cols)


def write(sweep_dir, name: str, rows: list[dict]) -> dict:
  """``DIR/sweep_<name>.json`` / ``.md`` / ``.png``; returns their paths."""
  out = epath.Path(sweep_dir)
  j = report.write_json(out / f"sweep_{name}.json", rows)
  md = out / f"sweep_{name}.md"
  md.write_text(markdown(name, rows))
  png = plot(out / f"sweep_{name}.png", rows, name)
  return {"json": os.fspath(j), "markdown": os.fspath(md), "plot": os.fspath(png)}


def aggregate(sweep_dir, name: str, runs) -> dict:
  """Reads every run of sweep ``name`` under ``sweep_dir`` and writes the sweep report."""
  return write(sweep_dir, name, collect(sweep_dir, runs))
