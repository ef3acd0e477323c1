"""Needle-in-a-haystack samples (docs/method.md, Evaluation protocols), for NIAH training and for evaluation.

Layout for length ``L`` and layout chunk ``C`` (the collator's chunk, 64 in the paper; for a
model with ``chunk_size`` real tokens per chunk use ``C = chunk_size`` so that the question's
chunk landmark performs the retrieval the answer chunk uses): needles lie in
``[0, L - 2C)``; the question ends at ``L - C``; the answer occupies
``[L - C + 1, L - C + 1 + A)``; the ``C - 1 - A`` positions after it are padding whose labels
are ignored. ``key_pos`` is the one answer position checked by the paper's accuracy: the first
answer token for ``single``, the last for ``multihop`` and ``multi``.

Variables are random strings of digit tokens by default (our tokenizer splits digits); with
``alphabet="tokens"`` they are random ordinary tokens of the vocabulary, as in the paper (whose
keys are uniform GPT-2 ids), which lets a retrieval query match a needle by the identity of its
tokens rather than by a pattern of ten digits. Every random choice comes from the caller's
per-sample ``rng`` (the reference code uses the global RNG here).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from jaxtyping import Int

from gca_jax.config import PASSKEY_ALPHABETS
from gca_jax.config import PASSKEY_VARIANTS as VARIANTS
DEFAULT_TOKEN_CNT = {"single": 10, "multihop": 5, "multi": 5}
IGNORE_ID = -100

# Template strings (docs/method.md, Evaluation protocols), tokenised with the caller's tokenizer.
SINGLE_NEEDLE = ("|The passkey is: ", "|")
SINGLE_QUESTION = "|What is the passkey? The passkey is: "
HOP_NEEDLE = ("|DEF ", " -> ", "|")
HOP_QUESTION = ("|The path from ", " is ")
HOP_ANSWER_SEP = ","
MULTI_NEEDLE = ("|One of the special magic numbers for ", " is ", "|")
MULTI_QUESTION = ("|The value of ", " is ")
# Each variant's needle and question constants, by name: gca_jax.evals.templates swaps them.
FORM_NAMES = {"single": ("SINGLE_NEEDLE", "SINGLE_QUESTION"), "multihop": ("HOP_NEEDLE", "HOP_QUESTION"),
              "multi": ("MULTI_NEEDLE", "MULTI_QUESTION")}


def form(variant: str) -> tuple:
  """``variant``'s (needle, question) templates as installed now (``templates.applied`` may
  have swapped them). Key/value variants: needle (before the key, between key and value, after
  the value), question (before the key, after it)."""
  needle, question = FORM_NAMES[variant]
  return globals()[needle], globals()[question]


class TokenizerLike(Protocol):
  pad_id: int

  @property
  def digit_ids(self) -> list[int]: ...

  # ``key_ids`` (ordinary token ids for ``alphabet="tokens"``) is optional: only that alphabet reads it.

  def encode(self, text: str) -> list[int]: ...


def key_alphabet(tok: TokenizerLike, alphabet: str = "digits") -> np.ndarray:
  """The token ids passkey variables are drawn from: the ten digits, or the tokenizer's
  ``key_ids`` (ordinary pieces: no control, byte, padding or landmark ids, none holding ``|``)."""
  if alphabet == "digits":
    return np.asarray(tok.digit_ids, np.int64)
  if alphabet == "tokens":
    ids = getattr(tok, "key_ids", None)
    if ids is None:
      raise ValueError(f"{type(tok).__name__} has no key_ids, so alphabet='tokens' cannot draw "
                       "random token variables; use alphabet='digits' or a gca_jax tokenizer")
    return np.asarray(ids, np.int64)
  raise ValueError(f"unknown passkey alphabet {alphabet!r}; use one of {PASSKEY_ALPHABETS}")


def random_key(rng: np.random.Generator, n: int, alphabet: np.ndarray) -> np.ndarray:
  """``n`` random ids of ``alphabet`` (uniform, with repetition)."""
  return alphabet[rng.integers(0, len(alphabet), n)]


def _cat(*parts) -> np.ndarray:
  return np.concatenate([np.asarray(p, np.int64).reshape(-1) for p in parts])


def _layout(variant: str, rng: np.random.Generator, tok: TokenizerLike, t: int, alphabet: np.ndarray):
  """Needles (in insertion order), question, answer and the checked answer offset."""
  enc = tok.encode
  if variant == "single":
    key = random_key(rng, t, alphabet)
    return [_cat(enc(SINGLE_NEEDLE[0]), key, enc(SINGLE_NEEDLE[1]))], _cat(enc(SINGLE_QUESTION)), key, 0
  if variant == "multihop":  # real chain v0->v1->v2, distractor chain v3->v4->v5
    v = [random_key(rng, t, alphabet) for _ in range(6)]
    pre, mid, post = HOP_NEEDLE
    needles = [_cat(enc(pre), a, enc(mid), b, enc(post)) for a, b in
               ((v[0], v[1]), (v[1], v[2]), (v[3], v[4]), (v[4], v[5]))]
    answer = _cat(v[1], enc(HOP_ANSWER_SEP), v[2])
    question = _cat(enc(HOP_QUESTION[0]), v[0], enc(HOP_QUESTION[1]))
    return [needles[i] for i in rng.permutation(len(needles))], question, answer, len(answer) - 1
  if variant == "multi":  # one real key/value pair, five distractors
    v = [random_key(rng, t, alphabet) for _ in range(12)]
    pre, mid, post = MULTI_NEEDLE
    needles = [_cat(enc(pre), v[2 * i], enc(mid), v[2 * i + 1], enc(post)) for i in range(6)]
    question = _cat(enc(MULTI_QUESTION[0]), v[0], enc(MULTI_QUESTION[1]))
    return [needles[i] for i in rng.permutation(len(needles))], question, v[1], t - 1
  raise ValueError(f"unknown passkey variant {variant!r}; use one of {VARIANTS}")


def make_passkey_sample(haystack_tokens: Int[np.ndarray, "n"], length: int, rng: np.random.Generator,
                        tok: TokenizerLike, variant: str = "single", token_cnt: int | None = None,
                        layout_chunk: int = 64, alphabet: str = "digits") -> dict[str, Any]:
  """One needle sample of ``length`` tokens built from ``haystack_tokens`` (pure given ``rng``);
  ``alphabet`` ("digits" or "tokens", see ``key_alphabet``) is what the variables are made of.

  Returns ``tokens`` (int32[L], padding = ``tok.pad_id``), ``labels`` (tokens with
  ``IGNORE_ID`` after the answer), ``loss_mask`` (int32, 1 where labels count),
  ``answer_mask`` (int32, 1 on the answer), ``answer_start``, ``answer_len``, ``key_pos`` and
  ``needle_starts`` (int32, positions of the needles in ``tokens``).
  """
  big_l, c = int(length), int(layout_chunk)
  t = DEFAULT_TOKEN_CNT.get(variant, 1) if token_cnt is None else int(token_cnt)
  if t < 1:
    raise ValueError(f"token_cnt={t} must be >= 1")
  if c < 2:
    raise ValueError(f"layout_chunk={c} must be >= 2")
  needles, question, answer, key_off = _layout(variant, rng, tok, t, key_alphabet(tok, alphabet))
  q, a = len(question), len(answer)
  if a > c - 1:
    raise ValueError(f"answer of {a} tokens does not fit the last chunk (layout_chunk={c}); "
                     "use fewer passkey tokens or a larger layout_chunk")
  total = sum(len(n) for n in needles)
  answer_start = big_l - c + 1
  # Needles start in [0, zone) (haystack coordinates): at least one chunk before the question's
  # chunk, and before the question itself when it spans several chunks.
  zone = min(big_l - 2 * c, answer_start - q) - total
  if zone < len(needles):
    raise ValueError(f"length={big_l} is too short for {len(needles)} needle(s) of {total} tokens "
                     f"a question of {q} and a layout_chunk of {c}; need length > "
                     f"{max(2 * c, c - 1 + q) + total + len(needles)}")
  prefix_len = answer_start - q
  hay = np.asarray(haystack_tokens, np.int64).reshape(-1)
  if len(hay) < prefix_len - total:
    raise ValueError(f"haystack has {len(hay)} tokens; need at least {prefix_len - total}")
  pos = np.sort(rng.choice(zone, size=len(needles), replace=False))
  parts, starts, prev, shift = [], [], 0, 0
  for p, nd in zip(pos, needles):
    parts += [hay[prev:p], nd]
    starts.append(int(p) + shift)
    shift += len(nd)
    prev = int(p)
  parts.append(hay[prev:prev + prefix_len - (int(pos[-1]) + shift)])
  prefix = np.concatenate(parts)
  tail = np.full(c - 1 - a, tok.pad_id, np.int64)
  tokens = np.concatenate([prefix, question, answer, tail]).astype(np.int32)
  assert tokens.shape == (big_l,), tokens.shape
  labels = tokens.copy()
  labels[answer_start + a:] = IGNORE_ID
  answer_mask = np.zeros(big_l, np.int32)
  answer_mask[answer_start:answer_start + a] = 1
  return {
      "tokens": tokens, "labels": labels, "loss_mask": (labels != IGNORE_ID).astype(np.int32),
      "answer_mask": answer_mask, "answer_start": np.int32(answer_start), "answer_len": np.int32(a),
      "key_pos": np.int32(answer_start + key_off), "needle_starts": np.asarray(starts, np.int32),
  }
