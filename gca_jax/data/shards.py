"""Reading prepared token shards (``gca_jax.data.prepare``), each process only its share.

A prepared folder (local or ``gs://``) holds ``manifest.json`` and, per split and shard ``g``
of ``G``, ``<split>-<g>-of-<G>.tokens`` (the flat token stream of its documents, each
followed by the separator; raw little-endian ``uint16``/``uint32``) and
``<split>-<g>-of-<G>.docs.npy`` (``int64`` document offsets, as in the token store).

Process ``p`` of ``P`` owns the train shards ``g`` with ``g % P == p`` and opens no other. Training
sample ``i`` is a window of shard ``i % G``; with Grain's ``ShardByJaxProcess`` process ``p``
gets the samples ``i % P == p``, which lie in its own shards when ``P`` divides ``G``. The
sample order is therefore the same for any process count that divides ``G``. Validation
windows are dealt to the processes round-robin (``eval_windows``).
"""

from __future__ import annotations

import io
import json
import os
import threading

import numpy as np
from etils import epath

FORMAT, VERSION = "gca-jax-token-shards", 1
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")


class ShardError(ValueError):
  """Prepared shards are missing, corrupt or do not fit the run; the message says what to do."""


def shard_name(split: str, g: int, n: int) -> str:
  return f"{split}-{g:05d}-of-{n:05d}"


def is_local(path) -> bool:
  return "://" not in str(path)


def _reprepare(root) -> str:
  return (f"rerun the prepare command that wrote {root} (python -m gca_jax.data.prepare "
          f"--output={root} ...): it rebuilds what is missing or damaged")


def load_manifest(root: str | os.PathLike) -> dict:
  """The manifest of a prepared folder, checked for format and version."""
  root = epath.Path(root)
  path = root / MANIFEST
  try:
    if not path.exists():
      hint = ("; an interrupted prepare resumes when rerun" if (root / "plan.json").exists()
              else "")
      raise ShardError(f"no {MANIFEST} in {root}: it is not a prepared shard folder (or the "
                       f"prepare did not finish{hint}). Prepare it with python -m "
                       f"gca_jax.data.prepare --output={root}, or fix data.shards")
    raw = path.read_text()
  except ShardError:
    raise
  except Exception as e:  # noqa: BLE001 - permissions, network, bad URL
    raise ShardError(f"cannot read {path} ({type(e).__name__}: {e}); check the path and your "
                     "access to it (data.shards)") from e
  try:
    m = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ShardError(f"{path} is not valid JSON ({e.msg}); {_reprepare(root)}") from e
  if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != VERSION:
    raise ShardError(f"{path} is not a version-{VERSION} {FORMAT} manifest; prepare the corpus "
                     "again with this version of gca_jax.data.prepare")
  return m


def check_tokenizer(manifest: dict, tok, root) -> None:
  """Raises ``ShardError`` unless ``tok`` is the tokenizer the shards were made with."""
  made = manifest["tokenizer"]
  if made["fingerprint"] != tok.fingerprint:
    raise ShardError(
        f"{epath.Path(root) / MANIFEST} was made with the {made['name']} tokenizer (fingerprint "
        f"{made['fingerprint']}, {made['vocab_size']} ids) but this run uses {tok.name} "
        f"(fingerprint {tok.fingerprint}, {tok.vocab_size} ids). Set data.tokenizer="
        f"{made['name']} (and data.tokenizer_model to the same model), or prepare the corpus "
        f"again with --tokenizer={tok.name}")


def stored_tokenizer(root: str | os.PathLike):
  """The sentencepiece model a prepare stored beside its shards."""
  from gca_jax.data.tokenizer import Tokenizer
  m = load_manifest(root)
  if m["tokenizer"]["name"] != "sentencepiece":
    raise ShardError(f"{root} was prepared with the {m['tokenizer']['name']} tokenizer; set "
                     f"data.tokenizer={m['tokenizer']['name']}")
  path = epath.Path(root) / m["tokenizer"]["model_file"]
  if not path.exists():
    raise ShardError(f"{path} (the shards' tokenizer) is missing; {_reprepare(root)}")
  return Tokenizer(path.read_bytes())


class ShardReader:
  """The shards of one split that one process owns; files are opened lazily, on first use.

  ``parts`` maps the global shard index to its manifest entry. Cheap to pickle (open files
  and memory maps are dropped). ``opened`` lists the files this reader has opened.
  """

  def __init__(self, root, split: str, parts: dict[int, dict], num_shards: int, dtype: str,
               vocab_size: int):
    self.root, self.split, self.parts = str(root), split, parts
    self.num_shards, self.dtype, self.vocab_size = num_shards, np.dtype(dtype), vocab_size
    self.opened: list[str] = []
    self._maps: dict[int, np.ndarray] = {}
    self._offsets: dict[int, np.ndarray] = {}
    self._local = threading.local()
    self._lock = threading.Lock()

  def __getstate__(self):
    d = dict(self.__dict__)
    d.update(_maps={}, _offsets={}, _local=None, _lock=None, opened=[])
    return d

  def __setstate__(self, d):
    self.__dict__.update(d)
    self._local, self._lock = threading.local(), threading.Lock()

  def _path(self, g: int, key: str) -> epath.Path:
    return epath.Path(self.root) / self._entry(g)[key]

  def _entry(self, g: int) -> dict:
    if g not in self.parts:
      raise ShardError(f"{self.split} shard {g} is not among this process's shards "
                       f"{sorted(self.parts)}; the process count must divide {self.num_shards}")
    return self.parts[g]

  def part_for(self, index: int) -> int:
    """The shard of training sample ``index``."""
    return index % self.num_shards

  def num_tokens(self, g: int) -> int:
    return int(self._entry(g)["num_tokens"])

  def offsets(self, g: int) -> np.ndarray:
    """Document offsets of shard ``g`` (checked against the manifest)."""
    if g not in self._offsets:
      e, path = self._entry(g), self._path(g, "docs")
      try:
        off = np.load(io.BytesIO(path.read_bytes()))
      except FileNotFoundError as err:
        raise ShardError(f"shard file {path} is missing; {_reprepare(self.root)}") from err
      except Exception as err:  # noqa: BLE001 - a damaged .npy
        raise ShardError(f"shard file {path} is corrupt ({err}); {_reprepare(self.root)}") from err
      if (off.ndim != 1 or len(off) != e["num_docs"] + 1 or int(off[0]) != 0
          or int(off[-1]) != e["num_tokens"] or np.any(np.diff(off) < 1)):
        raise ShardError(f"shard file {path} does not match the manifest "
                         f"({e['num_docs']} documents, {e['num_tokens']} tokens); "
                         f"{_reprepare(self.root)}")
      self._offsets[g] = off
    return self._offsets[g]

  def _check_size(self, g: int, path: epath.Path) -> None:
    want = self.num_tokens(g) * self.dtype.itemsize
    try:
      got = path.stat().length
    except FileNotFoundError as e:
      raise ShardError(f"shard file {path} is missing; {_reprepare(self.root)}") from e
    if got != want:
      raise ShardError(f"shard file {path} is corrupt: {got} bytes, the manifest says {want}; "
                       f"{_reprepare(self.root)}")
    with self._lock:
      self.opened.append(path.name)

  def read(self, g: int, start: int, n: int) -> np.ndarray:
    """Tokens ``[start, start + n)`` of shard ``g`` as int32 (ids checked against the vocabulary)."""
    path = self._path(g, "tokens")
    if is_local(self.root):
      if g not in self._maps:
        self._check_size(g, path)
        self._maps[g] = np.memmap(os.fspath(path), dtype=self.dtype, mode="r")
      out = np.asarray(self._maps[g][start:start + n], np.int32)
    else:  # one handle per thread and shard: seek + read is not thread-safe on one handle
      files = getattr(self._local, "files", None)
      if files is None:
        files = self._local.files = {}
      if g not in files:
        self._check_size(g, path)
        files[g] = path.open("rb")
      f, size = files[g], self.dtype.itemsize
      f.seek(start * size)
      out = np.frombuffer(f.read(n * size), self.dtype).astype(np.int32)
    if out.size and int(out.max()) >= self.vocab_size:
      raise ShardError(f"shard file {path} holds id {int(out.max())} >= vocab_size "
                       f"{self.vocab_size}: it is corrupt or from another tokenizer; "
                       f"{_reprepare(self.root)}")
    return out


def process_parts(manifest: dict, split: str, process: int, count: int) -> dict[int, dict]:
  """Manifest entries of the ``split`` shards owned by ``process`` of ``count``."""
  shards = manifest["splits"][split]["shards"]
  return {g: e for g, e in enumerate(shards) if g % count == process}


def reader(root, manifest: dict, split: str, process: int, count: int) -> ShardReader:
  n = len(manifest["splits"][split]["shards"])
  return ShardReader(root, split, process_parts(manifest, split, process, count), n,
                     manifest["dtype"], manifest["tokenizer"]["vocab_size"])


def eval_windows(manifest: dict, seq_len: int, process: int, count: int) -> np.ndarray:
  """``(shard, start)`` rows of this process's validation windows: the non-overlapping
  windows of every validation shard, in order, cut to a multiple of ``count``; process ``p``
  takes rows ``p, p + count, ...`` (the validation split is small, so its shards are shared
  by window rather than by file)."""
  shards = manifest["splits"]["validation"]["shards"]
  rows = [(g, k * seq_len) for g, e in enumerate(shards) for k in range(e["num_tokens"] // seq_len)]
  rows = rows[:len(rows) - len(rows) % count]
  if not rows:
    tot = manifest["splits"]["validation"]["num_tokens"]
    raise ShardError(f"the validation split ({tot} tokens in {len(shards)} shards) has fewer "
                     f"than {count} windows of seq_len={seq_len} tokens; prepare with a larger "
                     "--val_fraction")
  return np.asarray(rows[process::count], np.int64).reshape(-1, 2)
