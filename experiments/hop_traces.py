"""Retrieval traces of 2-hop passkey runs: which chunks each retrieval group picks, and with
what weight, at the two landmarks that matter.

* the **question's landmark** (the last landmark before the answer chunk): its picks are the
  chunks the answer chunk reads through GCA, so they must hold v1 (needle A, ``v0 -> v1``) and
  v2 (needle B, ``v1 -> v2``);
* the landmark **before** it: its picks serve the question's own chunk, the question's landmark
  included, so they are all that a later group's query at the question's landmark can have
  read. A group's query is the hidden state entering it, so only a second group's query can
  carry v1, and only when these earlier picks held needle A.

Each picked chunk gets a role: ``A`` (holds v1, the first hop's answer), ``B`` (holds v2),
``distractor`` (the other chain), ``other`` (haystack or the question). A target chunk at or
after the landmark's own chunk is inside the sliding window and needs no pick. Runs trained on
the ``multi`` variant (one real key/value needle among five distractors) are traced the same
way, with ``A`` the real needle's value and no ``B``: one content-addressed hop.

  python -m experiments.hop_traces --hop_run=runs/replicate/demo_drt-2hop-top8-groups2 \\
      --hop_trace_multipliers=1,64 --hop_trace_samples=40
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

HOP_SWEEP = flags.DEFINE_string("hop_sweep", "demo_2hop_top8", "The 2-hop sweep of make replicate "
                                 "(1 vs 2 retrieval groups).")
HOP_RUN = flags.DEFINE_string("hop_run", "", "A finished 2-hop run folder (experiment.json).")
HOP_TRACE_MULTIPLIERS = flags.DEFINE_string("hop_trace_multipliers", "1,64",
                                            "Trace lengths (x training length).")
HOP_TRACE_SAMPLES = flags.DEFINE_integer("hop_trace_samples", 40, "Samples traced per length.")

ROLES = ("A", "B", "distractor", "other")


def _chunks(lo: int, hi: int, s: int) -> set[int]:
  """Chunks holding raw positions lo .. hi-1."""
  return set(range(lo // s, (hi - 1) // s + 1))


def needle_roles(sample: dict, tok, token_cnt: int, s: int, pad: int = 0,
                 variant: str = "multihop") -> dict[str, set[int]]:
  """Chunks of the needles' targets (chunk size ``s``, ``pad`` tokens of left padding), found
  by reading the needles' variables. ``multihop``: ``A`` holds v1 in needle A (``v0 -> v1``),
  ``B`` v2 in needle B (``v1 -> v2``). ``multi`` (one hop among needles): ``A`` holds the value
  of the needle whose key the question names, ``B`` is empty. ``distractor``: every chunk of
  the other needles."""
  from gca_jax.data.passkey import form
  needle, question = form(variant)
  x = np.asarray(sample["tokens"])
  t = token_cnt
  pre, mid = len(tok.encode(needle[0])), len(tok.encode(needle[1]))
  a0 = int(sample["answer_start"])
  q_len = len(tok.encode(question[0])) + t + len(tok.encode(question[1]))
  v0 = x[a0 - q_len + len(tok.encode(question[0])):][:t]
  v1 = x[a0:a0 + t] if variant == "multihop" else None
  out: dict[str, set[int]] = {"A": set(), "B": set(), "distractor": set()}
  for st in np.asarray(sample["needle_starts"]).tolist():
    src, dst = x[st + pre:st + pre + t], st + pre + t + mid
    role = ("A" if np.array_equal(src, v0) else
            "B" if v1 is not None and np.array_equal(src, v1) else "distractor")
    lo, hi = (dst, dst + t) if role != "distractor" else (st, dst + t + 1)
    out[role] |= _chunks(lo + pad, hi + pad, s)
  return out


def landmark_picks(roles: dict[str, set[int]], idx: np.ndarray, w: np.ndarray, lmk: int) -> dict:
  """One group's picks at landmark ``lmk``: weight per role, and whether A's and B's target
  chunks are all covered (picked, or at or after ``lmk``: in the window)."""
  picks = [(int(e), float(x)) for e, x in zip(idx, w) if e < lmk]
  role_of = {e: r for r in ("A", "B", "distractor") for e in roles[r]}
  weight = dict.fromkeys(ROLES, 0.0)
  for e, x in picks:
    weight[role_of.get(e, "other")] += x
  picked = {e for e, _ in picks}
  covered = {r: all(e in picked or e >= lmk for e in roles[r]) for r in ("A", "B")}
  return {"picks": picks, "weight": weight, "covers_A": covered["A"], "covers_B": covered["B"]}


def trace(model, tok, hay, length: int, samples: int, token_cnt: int, *, seed: int = 0,
          batch: int = 4, alphabet: str = "digits", variant: str = "multihop") -> dict:
  """Per group, at the question's landmark and the one before it: the share of samples whose
  picks cover A's and B's target chunks, the mean weight per role, and 3 example samples."""
  import jax
  import jax.numpy as jnp

  from gca_jax.evals import runtime
  from gca_jax.evals.passkey import build_sample, model_inputs
  cfg = model.cfg
  s = cfg.chunk_size
  forward = jax.jit(lambda x: model.forward(x, return_hidden=True)["retrieval"])
  per: dict = {}
  examples = []
  for ids in runtime.batches(samples, batch):
    smp = [build_sample(hay, length, runtime.sample_rng(seed, length, i), tok, variant,
                        token_cnt, cfg, alphabet=alphabet) for i in ids]
    inputs = [model_inputs(x, cfg) for x in smp]
    ret = jax.device_get(forward(jnp.asarray(np.stack([x for x, _ in inputs]))))
    for b, (x, (_, pad)) in enumerate(zip(smp, inputs)):
      roles = needle_roles(x, tok, token_cnt, s, pad, variant)
      q_lmk = (int(x["answer_start"]) + pad) // s - 1
      ex = {"sample": ids[b], "question_landmark": q_lmk,
            "roles": {r: sorted(v) for r, v in roles.items()}, "groups": []}
      for g, (idx, w) in enumerate(ret):
        row = {}
        for name, lmk in (("before_question", q_lmk - 1), ("question", q_lmk)):
          p = landmark_picks(roles, np.asarray(idx[b, lmk]), np.asarray(w[b, lmk]), lmk)
          acc = per.setdefault((g, name), {"covers_A": 0, "covers_B": 0,
                                           **{f"w_{r}": 0.0 for r in ROLES}})
          acc["covers_A"] += p["covers_A"]
          acc["covers_B"] += p["covers_B"]
          for r in ROLES:
            acc[f"w_{r}"] += p["weight"][r]
          row[name] = p
        ex["groups"].append(row)
      if len(examples) < 3:
        examples.append(ex)
  summary = [{"group": g, "landmark": name,
              **{k: round(v / samples, 3) for k, v in acc.items()}} for (g, name), acc in sorted(per.items())]
  return {"length": length, "samples": samples, "summary": summary, "examples": examples}


def trace_run(run_dir: str, multipliers: list[int], samples: int, hay=None, tok=None, log=print) -> list[dict]:
  """Traces of a finished run at ``multipliers`` x its training length (validation split
  unless ``hay``/``tok`` are given); also written to ``<run_dir>/hop_traces.json``."""
  from gca_jax.evals.cli import load_experiment, load_model
  from gca_jax.evals.passkey import trained_alphabet, trained_token_cnt
  exp = load_experiment(run_dir)
  if hay is None:
    from gca_jax.data import token_store, tokenizer
    tok = tokenizer.build_tokenizer(exp.data.corpus, exp.data.vocab_size, exp.data.cache_dir, log=log)
    store = token_store.token_store_for(exp.data.corpus, tok, exp.data.cache_dir,
                                        exp.data.val_fraction, log=log)
    hay = np.asarray(token_store.load_split(store, "validation").tokens)
  model, _ = load_model(exp, run_dir, False)
  t = exp.data.seq_len
  variant = exp.data.passkey if exp.data.passkey in ("multihop", "multi") else "multihop"
  token_cnt = trained_token_cnt(exp, variant) or 5
  out = []
  for m in multipliers:
    r = {"run": exp.name, "multiplier": m, **trace(model, tok, hay, m * t, samples, token_cnt,
                                                          alphabet=trained_alphabet(exp, variant),
                                                          variant=variant)}
    for row in r["summary"]:
      log(f"  trace {exp.name} {m:4d}x group {row['group']} at {row['landmark']:15s}: covers A "
          f"{row['covers_A']:.2f} B {row['covers_B']:.2f}; weight A {row['w_A']:.2f} B {row['w_B']:.2f} "
          f"distractor {row['w_distractor']:.2f} other {row['w_other']:.2f}")
    out.append(r)
  with open(os.path.join(run_dir, "hop_traces.json"), "w") as f:
    json.dump(out, f, indent=1)
  return out


def main(argv) -> int:
  del argv
  if not HOP_RUN.value:
    raise app.UsageError("--hop_run is required: a finished 2-hop run folder")
  trace_run(HOP_RUN.value, [int(x) for x in HOP_TRACE_MULTIPLIERS.value.split(",") if x.strip()],
            HOP_TRACE_SAMPLES.value)
  return 0


if __name__ == "__main__":
  app.run(main)
