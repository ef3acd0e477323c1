"""Landmark layout and labels against hand-written layouts (docs/method.md, Token layout)."""

from __future__ import annotations

import numpy as np

from gca_jax.model.chunking import IGNORE, insert_landmarks, landmark_labels, remove_landmarks

L, P = 99, 0  # landmark and pad ids used below


def test_insert_landmarks_hand_layout():
  toks = np.array([[1, 2, 3, 4, 5, 6, 7]])
  got = np.asarray(insert_landmarks(toks, 3, landmark_id=L, pad_id=P))
  assert got.tolist() == [[1, 2, 3, L, 4, 5, 6, L, 7, P, P, L]]


def test_remove_landmarks_inverts_insertion():
  toks = np.arange(1, 15)[None]
  x = insert_landmarks(toks, 4, landmark_id=L, pad_id=P)
  assert np.asarray(remove_landmarks(x, 4, length=14)).tolist() == toks.tolist()
  assert np.asarray(remove_landmarks(x, 4)).tolist() == [list(range(1, 15)) + [P, P]]


def test_labels_hand_layout():
  """Real token t predicts raw token t+1 across chunk boundaries; landmarks, padding and the
  last real token are ignored."""
  toks = np.array([[10, 11, 12, 13, 14, 15, 16]])
  got = np.asarray(landmark_labels(toks, 3))
  I = IGNORE
  assert got.tolist() == [[11, 12, 13, I, 14, 15, 16, I, I, I, I, I]]


def test_labels_chunk_boundary_paper_size():
  """Chunk 63: position 62 (last real token of chunk 0) targets raw token 63; position 63
  (the landmark) is ignored; position 64 (first token of chunk 1) targets raw token 64."""
  toks = np.arange(126)[None] + 1000
  lab = np.asarray(landmark_labels(toks, 63))[0]
  assert lab.shape == (128,)
  assert lab[62] == 1063 and lab[63] == IGNORE and lab[64] == 1064
  assert lab[64] == toks[0, 64]
  assert lab[127] == IGNORE and lab[126] == IGNORE  # the last real token has no target
  assert (lab != IGNORE).sum() == 125
