"""GPT-2 BPE: the paper's ids (checked against the package's encoder.json), the reference layout,
the CLI, and clear errors for a model whose vocabulary or ids do not fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gca_jax.config import ConfigError, DataConfig, ModelConfig
from gca_jax.data import gpt2, tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok():
  return gpt2.GPT2Tokenizer()


@pytest.fixture(scope="module")
def encoder():
  """encoder.json maps byte-level strings (a space shows as 'Ġ', a newline as 'Ċ') to ids."""
  with open(gpt2.bpe_files()["encoder.json"]) as f:
    return json.load(f)


def test_known_ids(tok, encoder):
  assert tok.encode("Hello world") == [15496, 995]
  assert tok.digit_ids == list(range(15, 25))  # "0".."9"
  assert encoder["Ġthe"] == 262
  for word in ("the", "king", "river", "garden"):  # a common word after a space is one token
    assert tok.encode(f" {word}") == [encoder[f"Ġ{word}"]]
  assert tok.encode("\n") == [encoder["Ċ"]] == [198]
  assert encoder["<|endoftext|>"] == gpt2.EOT_ID == 50256


def test_reference_layout(tok):
  assert (tok.vocab_size, tok.pad_id, tok.landmark_id, tok.sep_id) == (50265, 50257, 50264, 50256)
  ids = tok.encode("a <|endoftext|> b")  # special strings in text stay text
  assert 50256 not in ids and max(ids) < 50257
  text = "Plain text, digits 0123456789 and unicode: é — 漢字 🙂\n\n  spaces  "
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode([15496, 50257, 50264, 995]) == "Hello world"  # pad and landmark dropped
  assert [tok.id_to_piece(i) for i in (50257, 50264)] == ["<pad>", "<lmk>"]


def test_config_and_model_checks(tok):
  cfg = DataConfig(tokenizer="gpt2", vocab_size=50265)
  assert isinstance(tokenizer.tokenizer_from_config(cfg), gpt2.GPT2Tokenizer)
  with pytest.raises(ConfigError, match="DataConfig.vocab_size=4096.*data.vocab_size=50265"):
    DataConfig(tokenizer="gpt2", vocab_size=4096)
  with pytest.raises(ConfigError, match="DataConfig.tokenizer='bpe'"):
    DataConfig(tokenizer="bpe")
  tokenizer.check_model_ids(tok, ModelConfig(vocab_size=50265, pad_id=50257))
  with pytest.raises(ConfigError, match="model.vocab_size=50000.*data.vocab_size=50265"):
    tokenizer.check_model_ids(tok, ModelConfig(vocab_size=50000))
  with pytest.raises(ConfigError, match="model.pad_id=50257"):
    tokenizer.check_model_ids(tok, ModelConfig(vocab_size=50265, pad_id=0))


def test_cli_prints_ids():
  r = subprocess.run([sys.executable, "-m", "gca_jax.data.tokenizer", "--tokenizer=gpt2",
                      "--encode=Hello world"], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert r.returncode == 0 and r.stdout.strip() == "[15496, 995]"
