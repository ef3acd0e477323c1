"""A lossless sentencepiece BPE tokenizer trained on the corpus, with a reserved landmark id.

Trainer options make ``decode(encode(x)) == x`` for any text: identity normalisation, no
whitespace folding, no dummy prefix, byte fallback for unseen characters, ``\\n`` as one
piece. Digits are split so a passkey is a run of digit tokens. Ids: ``<pad>`` 0, ``<unk>`` 1,
``<s>`` 2, ``</s>`` 3 (the document separator), and the last id, ``vocab_size - 1``, is the
control symbol ``<lmk>`` reserved for the model's landmark (never produced by ``encode``).
Models are cached under ``<cache>/tokenizers/<key>/spm.model``, keyed by a hash of the
corpus and the trainer options, so a run never retrains.

A user's own sentencepiece ``.model`` (``Tokenizer.load_user``) keeps its ids; the landmark is
appended as a new last id when the model has none. ``data.tokenizer='gpt2'`` gives GPT-2 BPE
(``gca_jax.data.gpt2``). ``tokenizer_from_config`` picks one for a ``DataConfig``;
``check_model_ids`` checks it against a ``ModelConfig``.

  python -m gca_jax.data.tokenizer --tokenizer=gpt2 --encode="Hello world"
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from etils import epath
from sentencepiece import sentencepiece_model_pb2

from gca_jax.data import cache, sources

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
LANDMARK_PIECE = "<lmk>"
DIGITS = "0123456789"


class TokenizerError(RuntimeError, ValueError):
  """A tokenizer could not be built or loaded; the message says why."""


def trainer_options(vocab_size: int) -> dict:
  """sentencepiece trainer options (``vocab_size`` counts the appended landmark)."""
  return dict(
      model_type="bpe", vocab_size=vocab_size - 1, normalization_rule_name="identity",
      remove_extra_whitespaces=False, add_dummy_prefix=False, byte_fallback=True,
      split_digits=True, allow_whitespace_only_pieces=True, user_defined_symbols=["\n"],
      character_coverage=0.9995, max_sentence_length=1 << 15,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>")


class Tokenizer:
  """Thin wrapper over a ``SentencePieceProcessor`` with the ids the model needs."""

  name = "sentencepiece"

  def __init__(self, model_proto: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.fingerprint = hashlib.sha256(model_proto).hexdigest()[:16]
    lmk = self._sp.piece_to_id(LANDMARK_PIECE)
    if lmk != self.vocab_size - 1 or not self._sp.is_control(lmk):
      raise TokenizerError(f"tokenizer model has no reserved control piece {LANDMARK_PIECE} as its "
                           "last id; build it with gca_jax.data.tokenizer.build_tokenizer")
    sp = self._sp
    # Our trained models: pad 0, unk 1, bos 2, eos 3. A user's model keeps its own ids; one
    # without a pad piece pads with unk (padded positions carry no loss).
    self.unk_id, self.bos_id, self.eos_id = sp.unk_id(), sp.bos_id(), sp.eos_id()
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else sp.unk_id()
    if self.eos_id < 0:
      raise TokenizerError("the sentencepiece model has no </s> (eos) piece, which separates "
                           "documents; train it with eos_id >= 0")

  @classmethod
  def load(cls, path: str | os.PathLike) -> Tokenizer:
    path = epath.Path(path)
    if not path.exists():
      raise FileNotFoundError(f"tokenizer model {path} does not exist; build it with build_tokenizer")
    return cls(path.read_bytes())

  @classmethod
  def load_user(cls, path: str | os.PathLike) -> Tokenizer:
    """A user's own sentencepiece ``.model``; ``<lmk>`` is appended as the last id if missing."""
    path = epath.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"data.tokenizer_model={str(path)!r} is not a file; pass the path of "
                              "a sentencepiece .model")
    proto = path.read_bytes()
    try:
      sp = spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError as e:
      raise TokenizerError(f"{path} is not a sentencepiece model ({e}); pass a .model file "
                           "written by sentencepiece's trainer") from e
    if sp.piece_to_id(LANDMARK_PIECE) != sp.get_piece_size() - 1:
      proto = _append_landmark(proto)
    return cls(proto)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def sep_id(self) -> int:
    """Document separator in the token stream (``</s>``)."""
    return self.eos_id

  @property
  def landmark_id(self) -> int:
    return self.vocab_size - 1

  def model_proto(self) -> bytes:
    return self._sp.serialized_model_proto()

  @property
  def digit_ids(self) -> list[int]:
    """Ids of the pieces ``"0"``..``"9"`` (each digit is its own token)."""
    ids = [self._sp.piece_to_id(d) for d in DIGITS]
    if self.unk_id in ids:
      raise TokenizerError("passkey samples need the digits 0-9 as pieces of the sentencepiece "
                           "model; train it with split_digits=True")
    return ids

  @functools.cached_property
  def key_ids(self) -> np.ndarray:
    """Ordinary pieces for random-token passkey variables: no control, unknown, byte-fallback,
    unused or user-defined pieces (padding, ``<lmk>``, newline), none blank or holding ``|``.
    Scanned once per tokenizer (every passkey sample reads it)."""
    sp = self._sp
    return np.asarray([i for i in range(self.vocab_size)
                       if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))
                       and sp.id_to_piece(i).replace("\u2581", " ").strip() and "|" not in sp.id_to_piece(i)],
                      np.int64)

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


def _append_landmark(model_proto: bytes) -> bytes:
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString(model_proto)
  p = m.pieces.add()
  p.piece, p.score, p.type = LANDMARK_PIECE, 0.0, sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL
  m.trainer_spec.vocab_size = len(m.pieces)
  return m.SerializeToString()


def train(texts: Sequence[str], vocab_size: int = 4096) -> Tokenizer:
  """Trains a tokenizer on documents (lines are the trainer's sentences) and checks it is lossless."""
  if vocab_size < 300:
    raise TokenizerError(f"vocab_size={vocab_size} is too small: byte fallback alone needs 256 "
                         "ids plus specials; use >= 300 (4096 is the default)")
  lines = (line for t in texts for line in t.split("\n") if line)
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=buf,
                                   num_threads=os.cpu_count() or 1, minloglevel=2,
                                   **trainer_options(vocab_size))
  except RuntimeError as e:
    raise TokenizerError(f"sentencepiece training failed: {e}; the corpus may be too small for "
                         f"vocab_size={vocab_size}") from e
  tok = Tokenizer(_append_landmark(buf.getvalue()))
  verify_lossless(tok, texts)
  return tok


def verify_lossless(tok: Tokenizer, texts: Sequence[str]) -> None:
  for i, (t, ids) in enumerate(zip(texts, tok.encode_batch(texts))):
    if tok.decode(ids) != t:
      bad = next(j for j, (a, b) in enumerate(zip(tok.decode(ids) + "\0", t + "\0")) if a != b)
      raise TokenizerError(f"document {i} does not round-trip at character {bad}: "
                           f"{t[max(0, bad - 20):bad + 20]!r}")


def corpus_key(texts: Sequence[str], vocab_size: int) -> str:
  h = hashlib.sha256(json.dumps(trainer_options(vocab_size), sort_keys=True).encode())
  h.update(spm.__version__.encode())
  for t in texts:
    h.update(hashlib.sha256(t.encode()).digest())
  return h.hexdigest()[:16]


def build_tokenizer(corpus: str = "books", vocab_size: int = 4096,
                    cache_dir: str | os.PathLike | None = None, log=print) -> Tokenizer:
  """The cached tokenizer for ``corpus`` (a fetched corpus name or a path), trained if missing."""
  texts = [d["text"] for d in sources.read_corpus(corpus, cache_dir)]
  if not texts:
    raise TokenizerError(f"corpus {corpus!r} has no documents")
  key = corpus_key(texts, vocab_size)
  name = epath.Path(corpus).name if corpus not in sources.CORPORA else corpus
  path = cache.cache_root(cache_dir) / "tokenizers" / f"{name}-v{vocab_size}-{key}" / "spm.model"
  if path.exists():
    return Tokenizer.load(path)
  t0 = time.time()
  tok = train(texts, vocab_size)
  with cache.atomic_path(path.parent, is_dir=True, keep_existing=True) as tmp:
    (tmp / "spm.model").write_bytes(tok.model_proto())
    info = {"corpus": corpus, "vocab_size": vocab_size, "key": key,
            "train_seconds": round(time.time() - t0, 2), "options": trainer_options(vocab_size)}
    (tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
  log(f"trained tokenizer {path} in {time.time() - t0:.1f}s")
  return tok


def tokenizer_from_config(cfg, log=print):
  """The tokenizer a ``DataConfig`` names: GPT-2 BPE, the user's ``tokenizer_model``, the model
  stored beside prepared ``shards``, or the one trained (and cached) on ``corpus``."""
  if cfg.tokenizer == "gpt2":
    from gca_jax.data.gpt2 import GPT2Tokenizer
    return GPT2Tokenizer()
  if cfg.tokenizer_model:
    return Tokenizer.load_user(cfg.tokenizer_model)
  if getattr(cfg, "shards", ""):
    from gca_jax.data import shards
    return shards.stored_tokenizer(cfg.shards)
  return build_tokenizer(cfg.corpus, cfg.vocab_size, cfg.cache_dir, log=log)


def check_model_ids(tok, model_cfg) -> None:
  """Raises ``ConfigError`` when the model's vocabulary, pad or landmark id do not fit ``tok``."""
  from gca_jax.config import ConfigError
  name = getattr(tok, "name", "tokenizer")
  if tok.vocab_size != model_cfg.vocab_size:
    raise ConfigError(f"the {name} tokenizer has {tok.vocab_size} ids but model.vocab_size="
                      f"{model_cfg.vocab_size}; set data.vocab_size={tok.vocab_size} and "
                      f"model.vocab_size={tok.vocab_size}")
  if tok.landmark_id != model_cfg.lmk_id:
    raise ConfigError(f"the {name} tokenizer reserves landmark id {tok.landmark_id} but the model "
                      f"uses {model_cfg.lmk_id}; set model.landmark_id={tok.landmark_id}")
  if tok.pad_id != model_cfg.pad_id:
    raise ConfigError(f"the {name} tokenizer pads with id {tok.pad_id} but model.pad_id="
                      f"{model_cfg.pad_id}; set model.pad_id={tok.pad_id}")


def main(argv=None) -> int:
  """``--tokenizer=gpt2|sentencepiece [--tokenizer_model=M] --encode=TEXT``: prints the ids."""
  import argparse
  ap = argparse.ArgumentParser(prog="python -m gca_jax.data.tokenizer", description=main.__doc__)
  ap.add_argument("--tokenizer", default="gpt2", choices=("gpt2", "sentencepiece"))
  ap.add_argument("--tokenizer_model", default="", help="your own sentencepiece .model")
  ap.add_argument("--corpus", default="books", help="corpus the sentencepiece model is trained on")
  ap.add_argument("--vocab_size", type=int, default=4096)
  ap.add_argument("--cache_dir", default=None)
  ap.add_argument("--encode", default=None, help="text to encode")
  ap.add_argument("--decode", default=None, help="comma-separated ids to decode")
  args = ap.parse_args(argv)
  from gca_jax.config import ConfigError, DataConfig
  from gca_jax.data import gpt2
  try:
    vocab = gpt2.VOCAB_SIZE if args.tokenizer == "gpt2" else args.vocab_size
    cfg = DataConfig(corpus=args.corpus, tokenizer=args.tokenizer, vocab_size=vocab,
                     tokenizer_model=args.tokenizer_model, cache_dir=args.cache_dir)
    tok = tokenizer_from_config(cfg, log=lambda *_: None)
    if args.encode is not None:
      print(tok.encode(args.encode))
    if args.decode is not None:
      print(tok.decode(int(x) for x in args.decode.replace(" ", "").split(",") if x))
    if args.encode is None and args.decode is None:
      print(f"{tok.name}: vocab_size {tok.vocab_size}, pad {tok.pad_id}, separator {tok.sep_id}, "
            f"landmark {tok.landmark_id}, fingerprint {tok.fingerprint}")
  except (ConfigError, TokenizerError, FileNotFoundError, sources.SourceError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
