"""``--mode=eval_passkey|eval_ppl|generate`` entry points for ``experiments/main.py``.

Each ``*_main(flags)`` reads ``--workdir`` (its ``experiment.json`` unless an Experiment is
passed), restores the model from the workdir's latest checkpoint (or ``--random_init`` for
smoke runs), builds the run's tokenizer, evaluates and writes ``DIR/evals/...``. Bad input
(lengths, variants, files, missing checkpoints) raises ``EvalError``/``ConfigError``/
``CheckpointError`` with the reason, before anything is written.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from etils import epath

from gca_jax.config import PASSKEY_ALPHABETS, PASSKEY_VARIANTS, ConfigError, Experiment, from_dict


class EvalError(ValueError):
  """An evaluation cannot start; the message says why and what would work."""


def _define(kind, name, default, help_):
  if name not in flags.FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_)


_define("string", "lengths", "1024,4096", "Comma list of lengths in tokens (K/M suffixes ok).")
_define("integer", "samples", 10, "Passkey samples per length.")
_define("string", "variant", "single", f"Passkey variant: one of {PASSKEY_VARIANTS}.")
_define("integer", "passkey_tokens", 0, "Tokens per passkey variable (0: what the run was trained "
        "with for this variant, else the variant's default).")
_define("string", "passkey_alphabet", "", "What passkey variables are made of: 'digits' or 'tokens' "
        "(random vocabulary ids); empty: what the run was trained with for this variant.")
_define("string", "haystack", "", "Haystack / held-out tokens: a text file (tokenised with the run's "
        "tokenizer), a .npy token array, a token-store folder, or 'random'. Empty: the run's "
        "validation split.")
_define("string", "needle_template", None, "Needle template ({key}; multihop/multi: {a} and {b}).")
_define("string", "question_template", None, "Question template (multihop/multi: with {a}).")
_define("integer", "eval_seed", 0, "Seed of the samples (each seeded per seed, length, index).")
_define("integer", "segment_chunks", 1024, "Chunks per prefill segment (one compilation).")
_define("integer", "eval_batch", 1, "Samples / windows per batch.")
_define("bool", "offload", False, "Keep the chunk K/V memory in host memory (numpy).")
_define("bool", "random_init", False, "Evaluate a randomly initialised model (smoke runs).")
_define("string", "tokenizer", "run", "'run' (the experiment's sentencepiece) or 'bytes'.")
_define("float", "memory_budget_gb", 20.0, "Lengths whose estimated memory exceeds this are not run.")
_define("integer", "ppl_windows", 8, "Windows per length for perplexity.")
_define("string", "prompt", "", "Prompt text for --mode=generate.")
_define("integer", "max_new_tokens", 64, "Tokens to generate.")
_define("float", "temperature", 0.0, "Sampling temperature (0: greedy).")
_define("integer", "top_k", 0, "Top-k sampling (0: off).")


def _get(fl, name, default=None):
  try:
    return getattr(fl, name)
  except (AttributeError, flags.UnparsedFlagAccessError):
    return default


def load_experiment(workdir) -> Experiment:
  path = epath.Path(workdir) / "experiment.json"
  if not path.exists():
    raise EvalError(f"{path} does not exist: --workdir must be a run folder written by training "
                    "(or pass the Experiment)")
  try:
    return from_dict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise EvalError(f"{path} is not valid JSON: {e}") from None


def load_model(exp: Experiment, workdir, random_init: bool):
  """The experiment's model with the workdir's latest checkpoint (or random weights)."""
  from flax import nnx

  from gca_jax.model import build_model
  model = build_model(exp.model, rngs=nnx.Rngs(exp.train.seed), execution=exp.execution)
  if random_init:
    return model, "random_init"
  from gca_jax.checkpoint import restore_params
  nnx.update(model, restore_params(workdir, exp))
  return model, "checkpoint"


def make_tokenizer(exp: Experiment, kind: str):
  if kind == "bytes":
    from gca_jax.evals.haystack import ByteTokenizer
    return ByteTokenizer(exp.model.vocab_size)
  if kind != "run":
    raise EvalError(f"--tokenizer={kind!r}: use 'run' or 'bytes'")
  from gca_jax.data.tokenizer import tokenizer_from_config
  return tokenizer_from_config(exp.data)


def load_tokens(spec: str, exp: Experiment, tok, need: int):
  """Haystack / held-out tokens from ``--haystack`` (or the run's validation split)."""
  from gca_jax.evals import haystack as hs
  if spec == "random":
    return hs.random_haystack(max(need, 1 << 16), exp.model.vocab_size, seed=0,
                              avoid=(exp.model.lmk_id,))
  if spec:
    return hs.load_haystack(spec, tok)
  from gca_jax.data import token_store
  store = token_store.token_store_for(exp.data.corpus, tok, exp.data.cache_dir, exp.data.val_fraction)
  return token_store.load_split(store, "validation").tokens


def _setup(fl, exp):
  workdir = _get(fl, "workdir")
  if not workdir:
    raise EvalError("--workdir is required")
  exp = exp or load_experiment(workdir)
  return workdir, exp


def _progress():
  from tqdm import tqdm
  return tqdm


def eval_passkey_main(fl=flags.FLAGS, exp: Experiment | None = None) -> dict:
  """Passkey accuracy per length -> ``DIR/evals/passkey_<variant>.{json,md,png}``."""
  from gca_jax.evals import passkey, report, runtime
  from gca_jax.evals.templates import Templates
  workdir, exp = _setup(fl, exp)
  variant = _get(fl, "variant", "single")
  if variant not in PASSKEY_VARIANTS:
    raise EvalError(f"--variant={variant!r} is unknown; use one of {PASSKEY_VARIANTS}")
  lengths = runtime.parse_lengths(_get(fl, "lengths", "1024"))
  tok = make_tokenizer(exp, _get(fl, "tokenizer", "run"))
  templates = Templates(_get(fl, "needle_template"), _get(fl, "question_template"))
  token_cnt = _get(fl, "passkey_tokens", 0) or passkey.trained_token_cnt(exp, variant)
  alphabet = _get(fl, "passkey_alphabet", "") or passkey.trained_alphabet(exp, variant)
  if alphabet not in PASSKEY_ALPHABETS:
    raise EvalError(f"--passkey_alphabet={alphabet!r} is unknown; use one of {PASSKEY_ALPHABETS}")
  passkey.check_lengths(lengths, tok, variant, token_cnt, exp.model, templates, alphabet)
  hay = load_tokens(_get(fl, "haystack", ""), exp, tok, max(lengths))
  model, source = load_model(exp, workdir, _get(fl, "random_init", False))
  rows = passkey.passkey_eval(
      model, tok, hay, lengths, variant=variant, samples=_get(fl, "samples", 10),
      seed=_get(fl, "eval_seed", 0), token_cnt=token_cnt, templates=templates, alphabet=alphabet,
      segment_chunks=_get(fl, "segment_chunks", 1024), batch=_get(fl, "eval_batch", 1),
      offload=_get(fl, "offload", False), budget_gb=_get(fl, "memory_budget_gb", 20.0),
      model_name=f"{exp.name} ({exp.model.model_type}, {source})", progress=_progress())
  return report.write_passkey(epath.Path(workdir) / "evals", variant, rows)


def eval_ppl_main(fl=flags.FLAGS, exp: Experiment | None = None) -> dict:
  """Perplexity per length -> ``DIR/evals/ppl.{json,md,png}``."""
  from gca_jax.evals import perplexity, report, runtime
  workdir, exp = _setup(fl, exp)
  lengths = runtime.parse_lengths(_get(fl, "lengths", "1024"))
  tok = make_tokenizer(exp, _get(fl, "tokenizer", "run"))
  tokens = load_tokens(_get(fl, "haystack", ""), exp, tok, max(lengths))
  model, source = load_model(exp, workdir, _get(fl, "random_init", False))
  rows = perplexity.perplexity_eval(
      model, tokens, lengths, max_windows=_get(fl, "ppl_windows", 8), batch=_get(fl, "eval_batch", 1),
      segment_chunks=_get(fl, "segment_chunks", 1024), offload=_get(fl, "offload", False),
      budget_gb=_get(fl, "memory_budget_gb", 20.0),
      model_name=f"{exp.name} ({exp.model.model_type}, {source})", progress=_progress())
  return report.write_ppl(epath.Path(workdir) / "evals", rows)


def generate_main(fl=flags.FLAGS, exp: Experiment | None = None) -> dict:
  """Continues ``--prompt``; prints the text and writes ``DIR/evals/generate.json``."""
  import jax
  import numpy as np

  from gca_jax.evals import report
  from gca_jax.infer import generate
  workdir, exp = _setup(fl, exp)
  tok = make_tokenizer(exp, _get(fl, "tokenizer", "run"))
  prompt = _get(fl, "prompt", "")
  ids = np.asarray(tok.encode(prompt), np.int32)
  if ids.size == 0:
    raise EvalError("--prompt is empty (or tokenises to nothing): give some text")
  n = _get(fl, "max_new_tokens", 64)
  temperature, top_k = _get(fl, "temperature", 0.0), _get(fl, "top_k", 0) or None
  model, source = load_model(exp, workdir, _get(fl, "random_init", False))
  out = generate(model, ids, n, temperature=temperature, top_k=top_k,
                 rng=jax.random.PRNGKey(_get(fl, "eval_seed", 0)),
                 segment_chunks=min(_get(fl, "segment_chunks", 1024), 64))
  text = tok.decode(out.tolist()) if hasattr(tok, "decode") else None
  print(text if text is not None else out.tolist(), file=sys.stdout)
  path = report.write_json(epath.Path(workdir) / "evals" / "generate.json", [{
      "prompt": prompt, "tokens": out.tolist(), "text": text, "temperature": temperature,
      "top_k": top_k, "model": f"{exp.name} ({source})"}])
  return {"json": str(path)}


# Adapters for experiments/main.py's MODES table (mode -> fn(exp, workdir)).
def _mode(fn):
  def run(exp: Experiment, workdir: str) -> dict:
    class _F:
      def __getattr__(self, name):
        return workdir if name == "workdir" else getattr(flags.FLAGS, name)
    return fn(_F(), exp)
  return run


MODES = {"eval_passkey": _mode(eval_passkey_main), "eval_ppl": _mode(eval_ppl_main),
         "generate": _mode(generate_main)}

__all__ = ["EvalError", "ConfigError", "eval_passkey_main", "eval_ppl_main", "generate_main", "MODES"]
