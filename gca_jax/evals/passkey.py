"""Passkey / NIAH accuracy against length (docs/method.md, Evaluation protocols), for DRT and the baselines.

Samples come from ``gca_jax.data.passkey.make_passkey_sample`` with ``layout_chunk`` = the
model's chunk size, so the question's landmark makes the retrieval the answer chunk uses. A DRT
sample whose length is not a multiple of the chunk is left-padded with ``pad_id`` (as the
authors pad prompts) so that the layout's last chunk is the model's last chunk.

Scoring: ``tokens[key_pos] = 0`` (anti-leak), teacher forcing; a hit means
``argmax(logits[key_pos - 1]) == true token at key_pos`` (one token, as the paper). Also the
whole-answer exact match under greedy decoding after the question. Only the question's last
token and the answer positions get logits: the prefix goes through the segmented prefill
(tail-exact for DRT: exact at these positions, linear cost) and the last chunk through decode
steps, so no [L, V] logits exist even at millions of tokens.
"""

from __future__ import annotations

import copy
import time

import jax.numpy as jnp
import numpy as np

from gca_jax.data import passkey as builder
from gca_jax.evals import haystack as hs
from gca_jax.evals import runtime
from gca_jax.evals.templates import Templates, applied
from gca_jax.infer import Engine
from gca_jax.model.chunking import raw_to_layout


def layout_chunk(cfg) -> int:
  return cfg.chunk_size


def build_sample(hay, length: int, rng, tok, variant: str, token_cnt, cfg, templates=None,
                 alphabet: str = "digits") -> dict:
  """One sample, with a clear error when ``length`` is too short for the layout."""
  if variant not in builder.VARIANTS:
    raise ValueError(f"unknown passkey variant {variant!r}; use one of {builder.VARIANTS}")
  c = layout_chunk(cfg)
  start = int(rng.integers(0, max(1, len(hay))))
  with applied(variant, templates):
    try:
      return builder.make_passkey_sample(hs.window(hay, start, length), length, rng, tok, variant,
                                         token_cnt, layout_chunk=c, alphabet=alphabet)
    except ValueError as e:
      raise ValueError(f"passkey length {length} is invalid for variant {variant!r} with a "
                       f"{c}-token layout chunk: {e}") from None


def trained_token_cnt(exp, variant: str) -> int | None:
  """Tokens per passkey variable a run was trained with for ``variant`` (None: the variant's
  default), so an evaluation scores the answer length the model learned."""
  return (exp.data.passkey_tokens or None) if exp.data.passkey == variant else None


def trained_alphabet(exp, variant: str) -> str:
  """What a run's passkey variables were made of for ``variant`` (digits unless it trained on
  that variant with ``data.passkey_alphabet``)."""
  return exp.data.passkey_alphabet if exp.data.passkey == variant else "digits"


def check_lengths(lengths, tok, variant: str, token_cnt, cfg, templates=None, alphabet: str = "digits") -> None:
  """Raises before anything runs if a length is too short for the layout."""
  hay = np.full(64, 32, np.int32)
  for n in lengths:
    build_sample(hay, n, np.random.default_rng(0), tok, variant, token_cnt, cfg, templates, alphabet)


def model_inputs(sample: dict, cfg) -> tuple[np.ndarray, int]:
  """(input tokens with the anti-leak zero at key_pos, left padding) for one sample."""
  x = np.array(sample["tokens"], np.int32)
  x[int(sample["key_pos"])] = 0
  pad = (-len(x)) % cfg.chunk_size if cfg.model_type == "drt" else 0
  return np.concatenate([np.full(pad, cfg.pad_id, np.int32), x]), pad


def _snapshot(state):
  s = copy.copy(state)
  s.picks, s.gathered = list(state.picks), (list(state.gathered) if state.gathered else state.gathered)
  return s


def score_batch(model, engine: Engine | None, samples: list[dict], *, mode: str = "tail",
                progress=None) -> tuple[np.ndarray, np.ndarray]:
  """(hit [B], exact [B]) for samples of one length and variant."""
  cfg = model.cfg
  xs, pads = zip(*(model_inputs(s, cfg) for s in samples))
  x, pad = np.stack(xs), pads[0]
  truth = np.stack([s["tokens"] for s in samples])
  a_start, a_len = int(samples[0]["answer_start"]), int(samples[0]["answer_len"])
  kp = int(samples[0]["key_pos"])
  answer = truth[:, a_start:a_start + a_len]
  q_end = a_start - 1 + pad  # the question's last token (input coordinates)
  if engine is None:  # full attention: short lengths only (checked by the budget)
    return _score_full(model, x, truth, kp, pad, a_start, a_len)
  b = x.shape[0]
  state = engine.new_state(b, x.shape[1])
  if q_end:
    tail = int(raw_to_layout(q_end, cfg.chunk_size)) if engine.drt else None
    engine.prefill(state, x[:, :q_end], mode=mode if engine.drt else "full", tail_from=tail,
                   progress=progress)
  first = np.asarray(engine.step(state, x[:, q_end]))
  # exact match: greedy decoding of the whole answer after the question
  greedy = _snapshot(state)
  tok, got = np.argmax(first, -1), []
  for i in range(a_len):
    got.append(tok)
    if i + 1 < a_len:
      tok = np.argmax(np.asarray(engine.step(greedy, tok.astype(np.int32))), -1)
  exact = np.all(np.stack(got, 1) == answer, 1)
  # the paper's single-token check, teacher forced on the anti-leak input
  logits = first
  for j in range(q_end + 1, kp + pad):
    logits = np.asarray(engine.step(state, x[:, j]))
  hit = np.argmax(logits, -1) == truth[:, kp]
  return hit, exact


def _score_full(model, x, truth, kp, pad, a_start, a_len):
  """Full attention: one forward on the anti-leak input (the hit) and one on the true input
  (exact match: greedy decoding reproduces the answer iff every teacher-forced argmax over the
  answer is right, so no token-by-token decoding of the whole sequence is needed)."""
  logits = np.asarray(model.forward(jnp.asarray(x))["logits"])
  hit = np.argmax(logits[:, kp - 1 + pad], -1) == truth[:, kp]
  true_in = np.concatenate([x[:, :pad], truth[:, :a_start + a_len]], 1).astype(np.int32)
  tf = np.asarray(model.forward(jnp.asarray(true_in))["logits"])
  pred = np.argmax(tf[:, a_start - 1 + pad:a_start - 1 + pad + a_len], -1)
  exact = np.all(pred == truth[:, a_start:a_start + a_len], 1)
  return hit, exact


def passkey_eval(model, tok, haystack, lengths, *, variant: str = "single", samples: int = 10,
                 seed: int = 0, token_cnt: int | None = None, templates: Templates | None = None,
                 alphabet: str = "digits",
                 segment_chunks: int = 1024, batch: int = 1, offload: bool = False,
                 mode: str = "tail", budget_gb: float = 20.0, model_name: str = "",
                 engines: dict | None = None,
                 progress=None, log=print) -> list[dict]:
  """Accuracy and exact match per length: a list of rows (see ``report``)."""
  cfg = model.cfg
  lengths = runtime.parse_lengths(lengths)
  if samples < 1:
    raise ValueError(f"samples={samples} must be >= 1")
  check_lengths(lengths, tok, variant, token_cnt, cfg, templates, alphabet)
  engines = {} if engines is None else engines  # segment size -> Engine (compiled once)
  rows = []
  for n in lengths:
    row = {"length": n, "samples": samples, "variant": variant, "model": model_name or cfg.model_type}
    reason = runtime.budget_reason(cfg, min(batch, samples), n, segment_chunks, budget_gb)
    if reason:
      log(f"passkey {variant} length {n}: not run ({reason})")
      rows.append(runtime.not_run({**row, "accuracy": None, "exact_match": None}, reason))
      continue
    engine = runtime.engine_for(model, engines, n, segment_chunks, offload)
    hits = exact = answer_tokens = 0
    t0 = time.perf_counter()
    bar = progress(total=samples, desc=f"passkey {variant} L={n}", leave=False) if progress else None
    for ids in runtime.batches(samples, batch):
      batch_samples = [build_sample(haystack, n, runtime.sample_rng(seed, n, i), tok, variant,
                                    token_cnt, cfg, templates, alphabet) for i in ids]
      h, e = score_batch(model, engine, batch_samples, mode=mode,
                         progress=progress if n >= (1 << 20) else None)
      hits, exact = hits + int(h.sum()), exact + int(e.sum())
      answer_tokens = int(batch_samples[0]["answer_len"])
      if bar is not None:
        bar.update(len(ids))
    if bar is not None:
      bar.close()
    dt = time.perf_counter() - t0
    row.update(accuracy=hits / samples, exact_match=exact / samples, answer_tokens=answer_tokens,
               seconds=round(dt, 3),
               tokens_per_s=round(n * samples / dt, 1))
    log(f"passkey {variant} length {n}: accuracy {row['accuracy']:.3f} exact {row['exact_match']:.3f} "
        f"({dt:.1f}s)")
    rows.append(row)
  return rows
