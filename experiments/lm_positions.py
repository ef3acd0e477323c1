"""Where in a window one language model beats another: next-token NLL by position.

  python -m experiments.lm_positions \
      --runs=drt=runs/replicate/lm_drt,sliding_window=runs/replicate/lm_sliding_window \
      [--baseline=sliding_window] [--ablate=drt] [--edges=1,32,128,256,512] [--windows=128] \
      [--heldout=python_docs] [--out=runs/replicate/lm_positions.json]

Every run is scored on the same ``--windows`` windows of its training length, on the first
run's validation split and on the unseen family ``--heldout`` (all runs must share the corpus,
tokenizer and training length). ``--ablate`` adds the named DRT without its retrieval
(``gca_jax.model.without_retrieval``) as ``<name>_no_retrieval``. For every haystack and run the
JSON gives the perplexity and, per bucket of predicted-token positions [from, to), the mean NLL
and its difference from ``--baseline`` (nats; negative: better than the baseline). The first
chunks of a DRT window have no retrieval, so the first bucket compares the local paths alone.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from absl import app, flags

from experiments import demo

RUNS = flags.DEFINE_string("runs", None, "Comma list of name=run folder (finished lm runs).")
BASELINE = flags.DEFINE_string("baseline", None, "The run the others are compared with (default: "
                               "the last of --runs).")
ABLATE = flags.DEFINE_string("ablate", "", "A DRT of --runs to score also without its retrieval.")
EDGES = flags.DEFINE_string("edges", "1,32,128,256,512", "Bucket edges over predicted-token positions "
                            "(1 .. training length).")
WINDOWS = flags.DEFINE_integer("windows", 128, "Windows of the training length per haystack.")
OUT = flags.DEFINE_string("out", "", "Where to write the JSON (default: print only).")


def _parse_runs(spec: str) -> dict[str, str]:
  out = {}
  for item in (x.strip() for x in spec.split(",") if x.strip()):
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"--runs item {item!r} is not name=folder (e.g. drt=runs/replicate/lm_drt)")
    out[name] = path
  if not out:
    raise ValueError("--runs is empty: give name=folder pairs")
  return out


def bucket_table(nll: dict[str, np.ndarray], baseline: str, edges: list[int]) -> dict[str, dict]:
  """Per run: ``ppl`` over every position and ``buckets`` of predicted-token positions
  [from, to) with mean ``nll`` and ``minus_baseline``. ``nll[name]`` is [windows, L-1]: entry p
  is the NLL of token p+1."""
  pos = np.arange(next(iter(nll.values())).shape[1]) + 1
  out = {}
  for name, x in nll.items():
    rows = []
    for lo, hi in zip(edges, edges[1:]):
      s = (pos >= lo) & (pos < hi)
      if s.any():
        rows.append({"from": lo, "to": hi, "nll": round(float(x[:, s].mean()), 5),
                     "minus_baseline": round(float((x - nll[baseline])[:, s].mean()), 5)})
    out[name] = {"ppl": round(float(np.exp(x.mean())), 4), "buckets": rows}
  return out


def positions(runs: dict[str, str], baseline: str, ablate: str, edges: list[int], windows: int,
              heldout: str) -> dict:
  from flax import nnx

  from gca_jax.evals.cli import load_experiment, load_model
  from gca_jax.evals.perplexity import token_nll
  from gca_jax.model import without_retrieval
  if baseline not in runs:
    raise ValueError(f"--baseline={baseline!r} is not one of --runs {sorted(runs)}")
  if ablate and ablate not in runs:
    raise ValueError(f"--ablate={ablate!r} is not one of --runs {sorted(runs)}")
  exps = {k: load_experiment(d) for k, d in runs.items()}
  first = next(iter(exps.values()))
  t = first.data.seq_len
  for k, e in exps.items():
    if (e.data.corpus, e.data.vocab_size, e.data.seq_len) != (first.data.corpus, first.data.vocab_size, t):
      raise ValueError(f"run {k!r} trained on another corpus, tokenizer or length than the first run; "
                       "compare runs of the same data")
    if demo.trained_step(runs[k]) is None:
      raise ValueError(f"run {k!r} ({runs[k]}) has no finished training; train it first")
  if sorted(edges) != edges or edges[0] < 1 or edges[-1] > t:
    raise ValueError(f"--edges {edges} must rise within 1..{t} (the training length)")
  models = {k: load_model(exps[k], runs[k], False)[0] for k in runs}
  if ablate:
    models[f"{ablate}_no_retrieval"] = without_retrieval(models[ablate])
  _, hays = demo.corpus_haystacks(first, heldout, log=lambda *_: None)
  forward = nnx.jit(lambda m, x: m.forward(x)["logits"])
  batch = min(16, windows)
  out = {"train_length": t, "windows": windows, "baseline": baseline, "runs": runs, "haystacks": {}}
  for name, hay in hays.items():
    if len(hay) < windows * t:
      raise ValueError(f"the {name} haystack has {len(hay)} tokens, {windows} windows need "
                       f"{windows * t}: lower --windows")
    wins = np.asarray(hay[:windows * t]).reshape(windows, t)
    nll = {k: np.concatenate([token_nll(m, wins[i:i + batch], forward)
                              for i in range(0, windows, batch)]) for k, m in models.items()}
    out["haystacks"][name] = bucket_table(nll, baseline, edges)
  return out


def main(argv) -> int:
  del argv
  try:
    if not RUNS.value:
      raise ValueError("pass --runs=name=folder,name=folder")
    runs = _parse_runs(RUNS.value)
    res = positions(runs, BASELINE.value or list(runs)[-1], ABLATE.value, demo._ints(EDGES.value),
                    WINDOWS.value, demo.HELDOUT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for hay, table in res["haystacks"].items():
    for name, r in table.items():
      cells = "  ".join(f"{b['from']}-{b['to']}: {b['minus_baseline']:+.4f}" for b in r["buckets"])
      print(f"{hay:12s} {name:28s} ppl {r['ppl']:8.3f}  minus {res['baseline']} by position: {cells}")
  if OUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(OUT.value)), exist_ok=True)
    with open(OUT.value, "w") as f:
      json.dump(res, f, indent=1)
  return 0


if __name__ == "__main__":
  app.run(main)
