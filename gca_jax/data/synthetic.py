"""A generated passkey task that needs no corpus: random filler, one needle, one question.

Ids: 0 pad, 1..10 the digits 0..9, 11 the needle marker, 12 the question marker, filler from
13 up to ``vocab_size - 2``; the last id is left for the model's landmark. The layout follows
docs/method.md, Evaluation protocols with a ``chunk``-token layout: the question's last token is the first token of
the last chunk and the answer digits follow it, so the retrieval made at the question's chunk
landmark serves the answer.
"""

from __future__ import annotations

import numpy as np

DIGIT0, NEEDLE, QUESTION, FILLER0 = 1, 11, 12, 13


def passkey_batch(seed: int, start_index: int, batch: int, length: int, chunk: int, vocab_size: int,
                  digits: int = 5) -> dict:
  """Samples ``start_index .. start_index + batch - 1``, each seeded by (seed, index)."""
  if length < 3 * chunk or digits + 1 > chunk - 1:
    raise ValueError(f"passkey_batch: need length >= 3*chunk ({3 * chunk}) and digits <= chunk-2; "
                     f"got length={length}, chunk={chunk}, digits={digits}")
  tokens = np.zeros((batch, length), np.int32)
  answer = np.zeros((batch, length), bool)
  needle_pos = np.zeros((batch,), np.int32)
  q_end = length - (length % chunk or chunk)  # first position of the last chunk
  for b in range(batch):
    rng = np.random.default_rng([seed, start_index + b])
    row = rng.integers(FILLER0, vocab_size - 1, size=length)
    key = rng.integers(0, 10, size=digits) + DIGIT0
    pos = int(rng.integers(0, q_end - 2 * chunk - digits))
    row[pos] = NEEDLE
    row[pos + 1:pos + 1 + digits] = key
    row[q_end] = QUESTION
    row[q_end + 1:q_end + 1 + digits] = key
    tokens[b] = row
    answer[b, q_end + 1:q_end + 1 + digits] = True
    needle_pos[b] = pos
  return {"tokens": tokens, "answer_mask": answer, "needle_pos": needle_pos}
