"""2-hop retrieval traces: needle roles against a string search of the sample's text (byte
tokens: one character per token), and pick accounting against hand-made picks."""

from __future__ import annotations

import numpy as np

from experiments import hop_traces
from gca_jax.data.passkey import make_passkey_sample
from gca_jax.evals.haystack import ByteTokenizer


def _by_search(text: str, v0: str, v1: str, s: int, pad: int) -> dict:
  """Chunks of v1 after 'DEF v0 -> ', of v2 after 'DEF v1 -> ', of whole distractor needles."""
  def target(src):
    i = text.index(f"|DEF {src} -> ") + len(f"|DEF {src} -> ")
    return i, text[i:i + len(v0)]
  (i1, got_v1), (i2, _) = target(v0), target(v1)
  assert got_v1 == v1
  out = {"A": {(p + pad) // s for p in range(i1, i1 + len(v0))},
         "B": {(p + pad) // s for p in range(i2, i2 + len(v0))}, "distractor": set()}
  for k in range(len(text)):
    if text.startswith("|DEF ", k) and k not in (i1 - len(f"|DEF {v0} -> "), i2 - len(f"|DEF {v1} -> ")):
      end = text.index("|", k + 1) + 1
      out["distractor"] |= {(p + pad) // s for p in range(k, end)}
  return out


def _byte_samples(variant: str, length: int):
  """Four samples of ``variant`` on a byte-tokenised haystack (3-character variables, chunks of
  12): the sample, its text and where its answer starts."""
  tok = ByteTokenizer(256)
  hay = np.frombuffer(b"lorem ipsum dolor sit amet " * (length // 10), np.uint8).astype(np.int64)
  for seed in range(4):
    smp = make_passkey_sample(hay, length, np.random.default_rng(seed), tok, variant, 3, layout_chunk=12)
    yield tok, smp, bytes(int(b) for b in smp["tokens"]).decode(), int(smp["answer_start"])


def test_needle_roles_match_a_string_search():
  for tok, smp, text, a0 in _byte_samples("multihop", 300):
    v1, v0 = text[a0:a0 + 3], text[a0 - 7:a0 - 4]  # the question ends "from <v0> is "
    assert text[a0 - 22:a0] == f"|The path from {v0} is "
    for pad in (0, 5):
      assert hop_traces.needle_roles(smp, tok, 3, 12, pad) == _by_search(text, v0, v1, 12, pad)


def test_landmark_picks_weights_and_coverage():
  roles = {"A": {3, 4}, "B": {7}, "distractor": {1}}
  idx = np.array([4, 3, 1, 0, 9])  # chunk 9 is not before landmark 8: an invalid pick
  w = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
  p = hop_traces.landmark_picks(roles, idx, w, lmk=8)
  assert p["covers_A"] and not p["covers_B"]
  assert np.allclose([p["weight"][r] for r in hop_traces.ROLES], [0.7, 0.0, 0.2, 0.1])
  # at landmark 6 chunk 7 is ahead of the landmark: B needs no pick there
  assert hop_traces.landmark_picks(roles, idx[:2], w[:2], lmk=6)["covers_B"]
  assert not hop_traces.landmark_picks(roles, idx[1:3], w[1:3], lmk=8)["covers_A"]


def test_multi_needle_roles_match_a_string_search():
  """One hop among needles: A is the value of the needle keyed by the question's key."""
  for tok, smp, text, a0 in _byte_samples("multi", 600):
    key = text[a0 - 7:a0 - 4]
    assert text[a0 - 21:a0] == f"|The value of {key} is "
    head = "|One of the special magic numbers for "
    for pad in (0, 5):
      want = {"A": set(), "B": set(), "distractor": set()}
      for k in range(len(text)):
        if text.startswith(head, k):
          end = text.index("|", k + 1) + 1
          if text[k + len(head):k + len(head) + 3] == key:
            want["A"] = {(p + pad) // 12 for p in range(end - 4, end - 1)}
            assert text[end - 4:end - 1] == text[a0:a0 + 3]  # the value is the answer
          else:
            want["distractor"] |= {(p + pad) // 12 for p in range(k, end)}
      assert want["A"] and want["distractor"]
      assert hop_traces.needle_roles(smp, tok, 3, 12, pad, "multi") == want
