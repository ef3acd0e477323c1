"""Run metrics: one JSON object per line in ``metrics.jsonl`` and TensorBoard scalars.

Process 0 writes ``<workdir>/metrics.jsonl`` and ``<workdir>/tb``; process ``p > 0`` writes
only ``<workdir>/metrics.process<p>.jsonl`` (same rows, no TensorBoard), so multi-host runs can
be checked for agreement. On resume, rows past the restored step are dropped (a torn last line
from a killed run included) and TensorBoard purges events from the restored step on.
"""

from __future__ import annotations

import json
import math
import os

from etils import epath


def metrics_path(workdir: str | os.PathLike, process_index: int = 0) -> epath.Path:
  name = "metrics.jsonl" if process_index == 0 else f"metrics.process{process_index}.jsonl"
  return epath.Path(workdir) / name


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """The complete rows of a metrics file (a torn or invalid line is skipped)."""
  path = epath.Path(path)
  if not path.exists():
    return []
  rows = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(row, dict) and "step" in row:
      rows.append(row)
  return rows


def _clean(v):
  v = float(v)
  return v if math.isfinite(v) else None  # JSON has no NaN/inf


class MetricsWriter:
  """Appends metric rows; keeps rows up to ``start_step`` of an earlier, interrupted run."""

  def __init__(self, workdir: str | os.PathLike, start_step: int, process_index: int = 0):
    self.path = metrics_path(workdir, process_index)
    kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
    tmp = self.path.parent / f".{self.path.name}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if process_index == 0:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(epath.Path(workdir) / "tb"),
                               purge_step=start_step + 1 if start_step > 0 else None)

  def write(self, step: int, values: dict, prefix: str = "train") -> None:
    row = {"step": int(step), **{k: _clean(v) for k, v in values.items()}}
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and v is not None:
          self._tb.add_scalar(f"{prefix}/{k}", v, int(step))
      self._tb.flush()

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()
