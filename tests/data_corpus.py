"""Small corpora the data tests write themselves (no network), and reference readers of shards."""

from __future__ import annotations

import hashlib
import json

import numpy as np

WORDS = ("the king queen river ship garden letter horse city lamp bell sailor mountain window "
         "friend storm bridge said unto thee and of to a in that passkey number is was").split()


def texts(n: int = 40, seed: int = 0) -> list[str]:
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    lines = [" ".join(rng.choice(WORDS, rng.integers(3, 12))) + f" {rng.integers(0, 999)}."
             for _ in range(5 + 3 * (i % 7))]
    out.append(f"Document {i}\n" + "\n".join(lines))
  return out


def write_jsonl(path, docs: list[str], with_ids: bool = True) -> None:
  with open(path, "w") as f:
    for i, t in enumerate(docs):
      f.write(json.dumps({"id": f"doc{i}", "text": t} if with_ids else {"text": t}) + "\n")


def held_out(doc_id: str, val_fraction: float, seed: int = 0) -> bool:
  """The documented validation rule: sha256("<seed>:<id>") as a fraction of 2**64."""
  h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big")
  return h / 2.0**64 < val_fraction


def shard_tokens(root, manifest: dict, split: str, g: int) -> np.ndarray:
  """Shard ``g`` of ``split`` read straight from its file (little-endian, manifest dtype)."""
  e = manifest["splits"][split]["shards"][g]
  return np.fromfile(f"{root}/{e['tokens']}", np.dtype(manifest["dtype"]).newbyteorder("<"))


def manifest_of(root) -> dict:
  with open(f"{root}/manifest.json") as f:
    return json.load(f)
