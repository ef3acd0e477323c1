"""Where downloaded and derived data lives, and atomic writes into it.

The cache root is ``--cache_dir`` if given, else ``$GCA_JAX_CACHE``, else
``<repo>/.cache/gca_jax`` (git-ignored). Everything is written to a temporary sibling and
renamed into place, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from etils import epath

ENV_VAR = "GCA_JAX_CACHE"
_REPO_ROOT = epath.Path(__file__).resolve().parents[2]


def cache_root(cache_dir: str | os.PathLike | None = None) -> epath.Path:
  """The cache root (created if missing)."""
  root = cache_dir or os.environ.get(ENV_VAR) or (_REPO_ROOT / ".cache" / "gca_jax")
  root = epath.Path(root).expanduser()
  try:
    root.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(f"cannot create the data cache {root} ({e}); pass --cache_dir or set "
                  f"{ENV_VAR} to a writable folder") from e
  return root


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False,
                keep_existing: bool = False) -> Iterator[epath.Path]:
  """Yields a temporary path next to ``final``; renames it to ``final`` only on success.

  ``keep_existing``: a ``final`` folder that appeared meanwhile (another process sharing the
  cache built the same keyed content) is kept and ours discarded, so a reader of it never
  sees it vanish."""
  final = epath.Path(final)
  final.parent.mkdir(parents=True, exist_ok=True)
  if is_dir:
    tmp = epath.Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
  else:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = epath.Path(name)
  try:
    yield tmp
    os.chmod(tmp, 0o755 if is_dir else 0o644)  # mkdtemp/mkstemp create private files
    if is_dir and final.exists():
      if keep_existing:
        shutil.rmtree(tmp, ignore_errors=True)
        return
      shutil.rmtree(final)
    try:
      os.replace(tmp, final)
    except OSError:  # another process renamed its copy into place first
      if not (keep_existing and final.exists()):
        raise
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    if tmp.is_dir():
      shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
      tmp.unlink()
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()
