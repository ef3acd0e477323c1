"""Passkey/NIAH layouts (docs/method.md, Evaluation protocols), checked against positions computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gca_jax.data import passkey

L, C = 512, 64


class CharTok:
  """One token per character (id = ord), so layouts can be read back as text."""

  pad_id = 0
  digit_ids = [ord(c) for c in "0123456789"]
  key_ids = [ord(c) for c in "abcdefghijklmnopqrstuvwxyz"]

  def encode(self, s):
    return [ord(c) for c in s]


def text(ids):
  return "".join(map(chr, ids))


HAY = np.full(2 * L, ord("."), np.int64)  # a haystack of dots: needles stand out


def sample(variant, t=None, seed=0, c=C, length=L, alphabet="digits", tok=None):
  return passkey.make_passkey_sample(HAY, length, np.random.default_rng(seed), tok or CharTok(), variant,
                                     token_cnt=t, layout_chunk=c, alphabet=alphabet)


def test_single_layout():
  s = sample("single", t=10)
  q = passkey.SINGLE_QUESTION
  # hand layout: question ends at L-C = 448, answer starts at L-C+1 = 449
  assert s["answer_start"] == 449 and s["key_pos"] == 449 and s["answer_len"] == 10
  assert text(s["tokens"][449 - len(q):449]) == q
  key = text(s["tokens"][449:459])
  assert key.isdigit() and len(key) == 10
  assert (s["tokens"][459:] == 0).all() and len(s["tokens"][459:]) == C - 1 - 10  # 53 pads
  assert (s["labels"][459:] == -100).all() and (s["labels"][:459] == s["tokens"][:459]).all()
  assert s["loss_mask"].sum() == 459 and s["answer_mask"].sum() == 10
  (start,) = s["needle_starts"]
  needle = "|The passkey is: " + key + "|"
  assert text(s["tokens"][start:start + len(needle)]) == needle
  assert start + len(needle) <= L - 2 * C  # needle at least one chunk away from the question
  assert s["tokens"].dtype == np.int32 and s["tokens"].shape == (L,)


def test_multihop_layout():
  s = sample("multihop", t=5)
  a = 2 * 5 + 1  # "v1,v2"
  assert s["answer_len"] == a and s["answer_start"] == L - C + 1
  assert s["key_pos"] == L - C + a == L - 53  # last token of v2
  ans = text(s["tokens"][L - 63:L - 63 + a])
  v1, v2 = ans.split(",")
  q = text(s["tokens"][:L - 63])
  v0 = q.rsplit("|The path from ", 1)[1].split(" is ")[0]
  assert f"|DEF {v0} -> {v1}|" in q and f"|DEF {v1} -> {v2}|" in q
  assert q.count("|DEF ") == 4 and len(s["needle_starts"]) == 4
  assert (np.diff(s["needle_starts"]) > 0).all()
  assert (s["labels"][L - 63 + a:] == -100).sum() == C - 1 - a


def test_multihop_token_alphabet():
  """alphabet='tokens': the variables are drawn from the tokenizer's key_ids (letters here),
  the layout and the chains are unchanged."""
  letters = set("abcdefghijklmnopqrstuvwxyz")
  seen = set()
  for seed in range(20):
    s = sample("multihop", t=5, seed=seed, alphabet="tokens")
    v1, v2 = text(s["tokens"][L - 63:L - 52]).split(",")
    q = text(s["tokens"][:L - 63])
    v0 = q.rsplit("|The path from ", 1)[1].split(" is ")[0]
    assert len(v0) == len(v1) == len(v2) == 5 and set(v0 + v1 + v2) <= letters
    assert f"|DEF {v0} -> {v1}|" in q and f"|DEF {v1} -> {v2}|" in q
    seen |= set(v0 + v1 + v2)
  assert len(seen) > 20  # uniform over the 26 letters, not a few of them
  # the digit alphabet stays the default: same rng, same draws, digits
  d = sample("multihop", t=5, seed=3)
  assert text(d["tokens"][L - 63:L - 52]).replace(",", "").isdigit()


def test_token_alphabet_errors():
  class NoKeys:
    pad_id = 0
    digit_ids = CharTok.digit_ids
    encode = CharTok.encode
  with pytest.raises(ValueError, match="no key_ids"):
    sample("single", t=5, alphabet="tokens", tok=NoKeys())
  with pytest.raises(ValueError, match="unknown passkey alphabet 'emoji'"):
    sample("single", t=5, alphabet="emoji")


def test_multi_layout():
  s = sample("multi", t=5)
  assert s["answer_len"] == 5 and s["key_pos"] == L - 59
  v1 = text(s["tokens"][L - 63:L - 58])
  q = text(s["tokens"][:L - 63])
  v0 = q.rsplit("|The value of ", 1)[1].split(" is ")[0]
  assert f"|One of the special magic numbers for {v0} is {v1}|" in q
  assert q.count("|One of the special magic numbers for ") == 6


class ShortTok(CharTok):
  """Templates cut to two tokens, so small layout chunks fit."""

  def encode(self, s):
    return [ord(c) for c in s[:2]]


@pytest.mark.parametrize("c", [16, 33])  # layout_chunk follows the model's chunk size
def test_layout_chunk_parameter(c):
  s = passkey.make_passkey_sample(HAY, 256, np.random.default_rng(1), ShortTok(), "single",
                                  token_cnt=3, layout_chunk=c)
  assert s["answer_start"] == 256 - c + 1 and s["key_pos"] == 256 - c + 1
  assert text(s["tokens"][256 - c - 1:256 - c + 1]) == "|W"  # question ends at L - c
  assert (s["labels"] == -100).sum() == c - 1 - 3


def test_deterministic_per_rng():
  a, b, c = sample("multihop", seed=5), sample("multihop", seed=5), sample("multihop", seed=6)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert not np.array_equal(a["tokens"], c["tokens"])


def test_errors():
  with pytest.raises(ValueError, match="variant"):
    sample("triple")
  with pytest.raises(ValueError, match="too short"):
    sample("single", length=150)
  with pytest.raises(ValueError, match="does not fit"):
    sample("single", t=70)
