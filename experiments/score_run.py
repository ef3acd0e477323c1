"""Passkey accuracy of one finished run on the demo's haystacks, at lengths in tokens.

  python -m experiments.score_run --run=runs/cur/demo_drt-cur480 --lengths=491520,16776960 \
      --samples=10 [--haystacks=validation,python_docs] [--heldout=python_docs]

The haystacks are the run's validation split (``validation``) and the unseen family
``--heldout`` (named by its corpus or folder name); lengths must be multiples of the run's
training length. Rows (the demo's form, each naming its ``haystack``) are cached in the run's
parent folder's ``eval_cache.json`` like the demo's, so a rerun reuses them, and are written to
``<run>/score_run.json``; one JSON line per row is printed.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from experiments import demo

RUN = flags.DEFINE_string("run", None, "A finished run folder (experiment.json and checkpoints).")
LENGTHS = flags.DEFINE_string("lengths", None, "Comma list of lengths in tokens (multiples of the "
                              "run's training length).")
SAMPLES = flags.DEFINE_integer("samples", 10, "Passkey samples per length.")
HAYSTACKS = flags.DEFINE_string("haystacks", "validation,heldout", "Comma list: 'validation' and/or "
                                "'heldout' (the --heldout family), or the family's name.")


def score(run_dir: str, lengths: list[int], samples: int, names: list[str], heldout: str) -> list[dict]:
  from gca_jax.evals.cli import load_experiment
  exp = load_experiment(run_dir)
  t = exp.data.seq_len
  bad = [n for n in lengths if n % t or n < t]
  if bad:
    raise ValueError(f"--lengths {bad} are not multiples of the run's training length {t}; "
                     f"use e.g. {', '.join(str(t * m) for m in (1, 64, 1024))}")
  step = demo.trained_step(run_dir)
  if step is None:
    raise ValueError(f"--run={run_dir} has no checkpoint; train it first")
  tok, hays = demo.corpus_haystacks(exp, heldout, log=lambda *_: None)
  held = [k for k in hays if k != demo.VALIDATION]
  names = [held[0] if n == "heldout" and held else n for n in names]
  unknown = [n for n in names if n not in hays]
  if unknown:
    raise ValueError(f"--haystacks {unknown} unknown; this run has {sorted(hays)} (set --heldout)")
  cache = demo.EvalCache(os.path.join(os.path.dirname(os.path.abspath(run_dir)), "eval_cache.json"))
  rows, state = [], {}
  for name in names:
    for n in lengths:
      rows += demo.passkey_rows(demo.DRT, exp, run_dir, step, cache, hays[name], tok,
                                [(n // t, samples)], state=state, haystack=name)
      print(json.dumps(rows[-1]), flush=True)
  with open(os.path.join(run_dir, "score_run.json"), "w") as f:
    json.dump(rows, f, indent=1)
  return rows


def main(argv) -> int:
  del argv
  if not RUN.value or not LENGTHS.value:
    print("error: pass --run=<run folder> and --lengths=<tokens,...>", file=sys.stderr)
    return 2
  try:
    score(RUN.value, demo._ints(LENGTHS.value), SAMPLES.value,
          [x.strip() for x in HAYSTACKS.value.split(",") if x.strip()], demo.HELDOUT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  app.run(main)
