"""Tokenizer: lossless round trip, split digits, reserved landmark id."""

from __future__ import annotations

import random

import pytest

from gca_jax.data import tokenizer as tokenizer_lib

WORDS = ("the king queen said unto thee and of to a in that passkey number is was".split())


def make_docs(n=30, seed=0):
  r = random.Random(seed)
  docs = []
  for d in range(n):
    lines = []
    for _ in range(40):
      words = [r.choice(WORDS) for _ in range(r.randint(3, 12))]
      lines.append(("  " if r.random() < 0.2 else "") + " ".join(words) + f" {r.randint(0, 99999)}.")
    docs.append(f"Document {d}\n\n" + "\n".join(lines))
  return docs


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.train(make_docs(), vocab_size=400)


def test_ids(tok):
  assert tok.vocab_size == 400
  assert (tok.pad_id, tok.eos_id, tok.sep_id) == (0, 3, 3)
  assert tok.landmark_id == 399
  assert tok.id_to_piece(tok.landmark_id) == "<lmk>"


@pytest.mark.parametrize("text", [
    "Plain text.", "  leading spaces\n\n\ttabs\tand   runs   of spaces  \n",
    "digits 0123456789 and 3.14159", "unicode: é ü — “quotes” 漢字 🙂", "", "\n", "<lmk> is text"])
def test_round_trip(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.landmark_id not in ids  # the landmark is never produced from text


def test_digits_are_single_tokens(tok):
  ids = tok.encode("12345")
  assert ids == [tok.digit_ids[int(c)] for c in "12345"]
  assert len(set(tok.digit_ids)) == 10


def test_key_ids_are_ordinary_pieces(tok):
  keys = set(tok.key_ids)
  # 4 specials, 256 byte-fallback pieces, the newline and the landmark: none is a key
  assert not keys & {tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.landmark_id}
  assert not keys & set(tok.encode("\n"))
  assert all(not tok.id_to_piece(i).startswith("<0x") for i in keys)
  assert all("|" not in tok.id_to_piece(i) for i in keys)
  assert set(tok.digit_ids) <= keys  # digits are ordinary pieces too
  # every key is a piece that text can produce and that decodes to non-blank text
  assert all(tok.decode([i]).strip() for i in keys) and len(keys) >= 100


def test_newline_is_one_piece(tok):
  assert len(tok.encode("\n")) == 1


def test_verify_lossless_reports_document():
  class Broken:
    def encode_batch(self, texts):
      return [[1] for _ in texts]

    def decode(self, ids):
      return "x"
  with pytest.raises(tokenizer_lib.TokenizerError, match="document 0"):
    tokenizer_lib.verify_lossless(Broken(), ["abc"])


def test_bad_inputs(tmp_path):
  with pytest.raises(tokenizer_lib.TokenizerError, match="vocab_size"):
    tokenizer_lib.train(["abc"], vocab_size=10)
  with pytest.raises(FileNotFoundError, match="build_tokenizer"):
    tokenizer_lib.Tokenizer.load(tmp_path / "missing.model")


def test_build_tokenizer_is_cached(tmp_path):
  corpus = tmp_path / "docs"
  corpus.mkdir()
  for i, d in enumerate(make_docs(10)):
    (corpus / f"{i}.txt").write_text(d)
  logs = []
  a = tokenizer_lib.build_tokenizer(str(corpus), 350, cache_dir=tmp_path / "cache", log=logs.append)
  b = tokenizer_lib.build_tokenizer(str(corpus), 350, cache_dir=tmp_path / "cache", log=logs.append)
  assert a.fingerprint == b.fingerprint and len(logs) == 1  # trained once


def test_users_own_model_gets_a_landmark(tmp_path):
  import sentencepiece as spm
  spm.SentencePieceTrainer.train(sentence_iterator=iter(make_docs(10)), vocab_size=120,
                                 model_prefix=str(tmp_path / "user"), minloglevel=2)
  plain = spm.SentencePieceProcessor(model_file=str(tmp_path / "user.model"))
  tok = tokenizer_lib.Tokenizer.load_user(tmp_path / "user.model")
  assert tok.vocab_size == plain.get_piece_size() + 1 == 121
  assert tok.landmark_id == 120 and tok.id_to_piece(120) == "<lmk>"
  assert (tok.pad_id, tok.sep_id) == (plain.unk_id(), plain.eos_id())  # no pad piece: pads with unk
  text = "the king said unto thee"
  assert tok.encode(text) == plain.encode(text)  # the user's ids are kept
  from gca_jax.config import DataConfig
  cfg = DataConfig(tokenizer_model=str(tmp_path / "user.model"), vocab_size=400)
  assert tokenizer_lib.tokenizer_from_config(cfg).fingerprint == tok.fingerprint
  with pytest.raises(FileNotFoundError, match="data.tokenizer_model"):
    tokenizer_lib.Tokenizer.load_user(tmp_path / "missing.model")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(tokenizer_lib.TokenizerError, match="not a sentencepiece model"):
    tokenizer_lib.Tokenizer.load_user(tmp_path / "junk.model")
