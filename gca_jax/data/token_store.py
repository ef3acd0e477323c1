"""The tokenised corpus, stored once as memory-mapped token files split by document.

Layout of ``<cache>/tokens/<name>-<key>/``: per split ``<split>.npy`` (flat ``uint16`` or
``uint32`` stream, every document followed by the separator id, as in PG19 preprocessing),
``<split>.offsets.npy`` (``int64[n_docs + 1]``: document d is ``[off[d], off[d+1] - 1)`` and
its separator sits at ``off[d+1] - 1``) and ``meta.json`` (document ids per split, tokenizer
fingerprint, dtype). The key hashes the corpus text, the tokenizer and the split, so a run
reuses the store and never re-tokenises. Documents are split, not tokens: a deterministic
hash of each document id orders the documents; the first ones, up to ``val_fraction`` of the
tokens, are held out for validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence

import numpy as np
from etils import epath

from gca_jax.data import cache, sources
from gca_jax.data.tokenizer import Tokenizer

SPLITS = ("train", "validation")


@dataclasses.dataclass(frozen=True)
class TokenSplit:
  """One split: the flat token stream (memory-mapped) and its document offsets."""

  tokens: np.ndarray
  offsets: np.ndarray
  doc_ids: tuple[str, ...]

  @property
  def num_tokens(self) -> int:
    return int(self.tokens.shape[0])

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)

  def doc(self, d: int) -> np.ndarray:
    """Tokens of document ``d`` without its separator."""
    return self.tokens[self.offsets[d]:self.offsets[d + 1] - 1]


def split_documents(doc_ids: Sequence[str], sizes: Sequence[int], val_fraction: float,
                    seed: int = 0) -> list[str]:
  """Split name per document. Documents are ranked by ``sha256(seed, id)``; the first ones are
  held out for validation until they hold ``val_fraction`` of the total size (at least one
  document, never all)."""
  if not 0.0 <= val_fraction < 1.0:
    raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
  n = len(doc_ids)
  rank = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{doc_ids[i]}".encode()).digest())
  held, total, acc = set(), sum(sizes), 0
  for i in rank[:max(0, n - 1)]:
    if val_fraction == 0 or acc >= val_fraction * total:
      break
    held.add(i)
    acc += sizes[i]
  return ["validation" if i in held else "train" for i in range(n)]


def _dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def build_token_store(docs: Sequence[sources.Document], tok: Tokenizer, out_dir: str | os.PathLike,
                      val_fraction: float = 0.05, seed: int = 0, log=print) -> epath.Path:
  """Tokenises ``docs`` once and writes the store to ``out_dir`` atomically (skips if present)."""
  out_dir = epath.Path(out_dir)
  if (out_dir / "meta.json").exists():
    return out_dir
  ids = [d["id"] for d in docs]
  if len(set(ids)) != len(ids):
    raise ValueError("document ids must be unique to split by document")
  t0 = time.time()
  encoded = tok.encode_batch([d["text"] for d in docs])
  t_tok = time.time() - t0
  split_of = split_documents(ids, [len(e) for e in encoded], val_fraction, seed)
  dtype = _dtype(tok.vocab_size)
  meta = {"tokenizer": tok.fingerprint, "vocab_size": tok.vocab_size, "sep_id": tok.sep_id,
          "dtype": dtype.name, "val_fraction": val_fraction, "seed": seed,
          "tokenize_seconds": round(t_tok, 2), "splits": {}}
  with cache.atomic_path(out_dir, is_dir=True, keep_existing=True) as tmp:
    for split in SPLITS:
      rows = [i for i in range(len(docs)) if split_of[i] == split]
      lens = np.array([len(encoded[i]) + 1 for i in rows], np.int64)
      offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
      total = int(offsets[-1])
      mm = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=dtype, shape=(total,))
      for j, i in enumerate(rows):
        mm[offsets[j]:offsets[j + 1] - 1] = encoded[i]
        mm[offsets[j + 1] - 1] = tok.sep_id
      mm.flush()
      del mm
      np.save(tmp / f"{split}.offsets.npy", offsets)
      meta["splits"][split] = {"num_docs": len(rows), "num_tokens": total,
                               "doc_ids": [ids[i] for i in rows],
                               "doc_tokens": [int(x) - 1 for x in lens]}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
  log(f"tokenised {len(docs)} documents in {t_tok:.1f}s into {out_dir}")
  return out_dir


def load_split(store_dir: str | os.PathLike, split: str) -> TokenSplit:
  """Memory-maps one split of a store (read-only)."""
  store_dir = epath.Path(store_dir)
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  meta_path = store_dir / "meta.json"
  if not meta_path.exists():
    raise FileNotFoundError(f"no token store at {store_dir}; build it with build_token_store / token_store_for")
  meta = json.loads(meta_path.read_text())
  tokens = np.load(store_dir / f"{split}.npy", mmap_mode="r")
  offsets = np.load(store_dir / f"{split}.offsets.npy")
  return TokenSplit(tokens, offsets, tuple(meta["splits"][split]["doc_ids"]))


def store_key(docs: Sequence[sources.Document], tok: Tokenizer, val_fraction: float, seed: int) -> str:
  h = hashlib.sha256(f"store-v1:{tok.fingerprint}:{val_fraction}:{seed}".encode())
  for d in docs:
    h.update(hashlib.sha256(f"{d['id']}\0{d['text']}".encode()).digest())
  return h.hexdigest()[:16]


def token_store_for(corpus: str, tok: Tokenizer, cache_dir: str | os.PathLike | None = None,
                    val_fraction: float = 0.05, seed: int = 0, log=print) -> epath.Path:
  """The cached token store of ``corpus`` under ``tok`` (built on first use)."""
  docs = list(sources.read_corpus(corpus, cache_dir))
  name = corpus if corpus in sources.CORPORA else epath.Path(corpus).name
  out = cache.cache_root(cache_dir) / "tokens" / f"{name}-{store_key(docs, tok, val_fraction, seed)}"
  return build_token_store(docs, tok, out, val_fraction, seed, log)
