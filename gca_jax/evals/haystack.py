"""Haystack tokens for passkey samples: a token array, a token store split, or a text file."""

from __future__ import annotations

import os

import numpy as np
from etils import epath


class ByteTokenizer:
  """Bytes as ids (smoke runs without a trained tokenizer): pad 0, digits are their bytes."""

  pad_id = 0

  def __init__(self, vocab_size: int = 256):
    if vocab_size < 128:
      raise ValueError(f"ByteTokenizer needs vocab_size >= 128, got {vocab_size}")
    self.vocab_size = vocab_size

  @property
  def digit_ids(self) -> list[int]:
    return [ord(d) for d in "0123456789"]

  @property
  def key_ids(self) -> list[int]:
    """Letters, for random-token passkey variables."""
    return [ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]

  def encode(self, text: str) -> list[int]:
    return [b if 0 < b < 127 else 63 for b in text.encode("utf-8")]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if 0 < int(i) < 128).decode("utf-8", "replace")


def load_haystack(spec: str, tok=None, split: str = "validation") -> np.ndarray:
  """Tokens from ``spec``: a ``.npy`` array, a token-store folder (its ``split``) or a text
  file tokenised with ``tok``. Raises ``FileNotFoundError``/``ValueError`` with the reason."""
  path = epath.Path(os.path.expanduser(spec))
  if not path.exists():
    raise FileNotFoundError(f"haystack {spec!r} does not exist (give a .npy token array, a token "
                            "store folder or a text file)")
  if path.is_dir():
    from gca_jax.data.token_store import load_split
    return np.asarray(load_split(path, split).tokens)
  if path.suffix == ".npy":
    return np.load(path, mmap_mode="r").reshape(-1)
  if tok is None:
    raise ValueError(f"haystack {spec!r} is a text file: a tokenizer is needed to tokenise it")
  ids = np.asarray(tok.encode(path.read_text()), np.int32)
  if ids.size == 0:
    raise ValueError(f"haystack {spec!r} is empty")
  return ids


def window(hay: np.ndarray, start: int, n: int) -> np.ndarray:
  """``n`` tokens of ``hay`` from ``start``, wrapping around (short corpora are repeated)."""
  if len(hay) == 0:
    raise ValueError("the haystack has no tokens")
  start %= len(hay)
  if start + n <= len(hay):
    return np.asarray(hay[start:start + n])
  # explicit modulo: numpy's take(mode="wrap") reduces each index by repeated subtraction,
  # quadratic when n is many times len(hay) (22 minutes for 16M tokens over 64)
  return np.asarray(hay)[np.arange(start, start + n, dtype=np.int64) % len(hay)]


def random_haystack(n: int, vocab_size: int, seed: int = 0, avoid=()) -> np.ndarray:
  """Random tokens (for benchmarks and tests), avoiding the ids in ``avoid``."""
  ids = np.random.default_rng(seed).integers(1, vocab_size - 1, n).astype(np.int32)
  for a in avoid:
    ids[ids == a] = 1
  return ids
