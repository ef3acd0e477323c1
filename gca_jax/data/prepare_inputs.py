"""What ``gca_jax.data.prepare`` reads: the input files of a corpus and their cut into units.

A corpus is a fetched name (``books``: its ``corpus.jsonl``), a ``.jsonl`` file, a ``.txt``
file, an ArrayRecord file, or a folder of ``*.jsonl`` / ``*.array_record*`` / ``*.txt`` files
(local or any etils path). The input is cut into ``num_shards`` units of about equal size, one
per output shard: JSONL by byte ranges (a line belongs to the range holding its first byte),
ArrayRecord by record ranges, text files whole (one document per file, assigned by where the
file starts in the concatenated bytes).
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Iterator

from etils import epath

from gca_jax.data import sources

KINDS = ("jsonl", "array_record", "txt")
TARGET_SHARD_BYTES = 128 << 20  # auto --num_shards: about this much text per shard
SHARD_MULTIPLE = 16  # auto --num_shards is a multiple of 16, so 1, 2, 4, 8 or 16 hosts share it


class PrepareError(ValueError):
  """The corpus or the output cannot be prepared; the message says what and how to fix it."""


def _kind_of(path: epath.Path) -> str:
  if path.name.endswith(".jsonl"):
    return "jsonl"
  if ".array_record" in path.name:
    return "array_record"
  return "txt"


def resolve(spec: str, cache_dir=None) -> tuple[str, epath.Path, list[str], list[int]]:
  """``(kind, root, files relative to root, sizes)``: sizes are bytes, or records for
  ArrayRecord."""
  from gca_jax.data import cache
  if spec in sources.CORPORA:
    path = cache.cache_root(cache_dir) / "corpora" / spec / "corpus.jsonl"
    if not path.exists():
      raise PrepareError(f"corpus {spec!r} is not in the cache {path.parent}; run `python -m "
                         f"gca_jax.data.fetch --corpus={spec}` first")
  else:
    path = epath.Path(spec)
  try:
    exists, is_dir = path.exists(), path.is_dir()
  except Exception as e:  # noqa: BLE001 - permissions, network, bad URL
    raise PrepareError(f"cannot read the corpus {spec!r} ({type(e).__name__}: {e}); check the "
                       "path and your access to it") from e
  if not exists:
    raise PrepareError(f"corpus {spec!r} does not exist: name a fetched corpus "
                       f"{sorted(sources.CORPORA)} or a .jsonl / .txt / ArrayRecord file or folder")
  if is_dir:
    root = path
    found = [str((epath.Path(d) / f).relative_to(root)) for d, _, fs in root.walk() for f in fs]
    for kind, pattern in (("jsonl", "*.jsonl"), ("array_record", "*.array_record*"), ("txt", "*.txt")):
      files = sorted(f for f in found if fnmatch.fnmatch(epath.Path(f).name, pattern))
      if files:
        break
    else:
      raise PrepareError(f"{path} holds no *.jsonl, *.array_record or *.txt files")
  else:
    root, files, kind = path.parent, [path.name], _kind_of(path)
  return kind, root, files, [_size(kind, root / f) for f in files]


def _size(kind: str, path: epath.Path) -> int:
  if kind != "array_record":
    return int(path.stat().length)
  return len(_array_record(path))


def _array_record(path: epath.Path):
  try:
    from array_record.python import array_record_data_source as ards
  except ImportError as e:
    raise PrepareError("reading ArrayRecord needs the array_record package "
                       "(pip install array-record)") from e
  return ards.ArrayRecordDataSource([str(path)])


def auto_num_shards(kind: str, sizes: list[int], item_bytes: int) -> int:
  """About 128 MB of text per shard, a multiple of 16; for text files at most one per file."""
  n = SHARD_MULTIPLE * max(1, math.ceil(item_bytes / (SHARD_MULTIPLE * TARGET_SHARD_BYTES)))
  if kind == "txt" and len(sizes) < n:
    n = 1 << (len(sizes).bit_length() - 1)  # the largest power of two <= the file count
  return n


def plan_units(kind: str, files: list[str], sizes: list[int], num_shards: int) -> list[list[list[int]]]:
  """Per unit, its pieces ``[file index, start, end)`` (bytes or records)."""
  total = sum(sizes)
  if total == 0:
    raise PrepareError("the corpus is empty")
  units: list[list[list[int]]] = [[] for _ in range(num_shards)]
  starts = [sum(sizes[:i]) for i in range(len(sizes))]
  if kind == "txt":
    for i, (s, n) in enumerate(zip(starts, sizes)):
      units[min(num_shards - 1, s * num_shards // total)].append([i, 0, n])
    empty = [k for k, u in enumerate(units) if not u]
    if empty:
      raise PrepareError(f"--num_shards={num_shards} leaves shard {empty[0]} without a text file "
                         f"({len(files)} files of uneven size); pass a smaller --num_shards")
    return units
  for k in range(num_shards):
    lo, hi = k * total // num_shards, (k + 1) * total // num_shards
    for i, (s, n) in enumerate(zip(starts, sizes)):
      a, b = max(lo, s), min(hi, s + n)
      if a < b:
        units[k].append([i, a - s, b - s])
  return units


def _jsonl_docs(path: epath.Path, rel: str, start: int, end: int) -> Iterator[sources.Document]:
  with path.open("rb") as f:
    pos = start
    if start > 0:  # the line holding byte start - 1 belongs to the previous range
      f.seek(start - 1)
      pos = start - 1 + len(f.readline())
    else:
      f.seek(0)
    while pos < end:
      line = f.readline()
      if not line:
        break
      at, pos = pos, pos + len(line)
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PrepareError(f"{path} at byte {at}: not valid JSON ({e}); expected one object per "
                           "line with a 'text' field") from e
      if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise PrepareError(f"{path} at byte {at}: no string field 'text'")
      yield {"id": str(rec.get("id", f"{rel}@{at}")), "source": str(rec.get("source", "jsonl")),
             "text": sources.normalise(rec["text"])}


def read_unit(kind: str, root: str, files: list[str], pieces: list[list[int]]) -> Iterator[sources.Document]:
  """The documents of one unit, in order."""
  root_path = epath.Path(root)
  for i, start, end in pieces:
    rel = files[i]
    path = root_path / rel
    if kind == "jsonl":
      yield from _jsonl_docs(path, rel, start, end)
    elif kind == "txt":
      yield {"id": rel, "source": "text", "text": sources.normalise(sources.decode_bytes(path.read_bytes()))}
    else:
      ds = _array_record(path)
      for j in range(start, end):
        yield sources.record_document(ds[j], f"{rel}@{j}")
