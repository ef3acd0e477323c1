"""``make replicate`` stage ``lm``: language modelling against equal-size baselines.

No needles: the DRT and three baselines of its parameter count (``lm_*`` in
``experiments/registry.py``: sliding window, full attention with ALiBi, full attention with
RoPE) are trained on the same windows for the same steps, then scored on held-out text at
``--lm_multipliers`` x the training length (all four models) and ``--lm_long_multipliers``
(DRT and sliding window only: full attention is quadratic), on the training corpus's validation
split and on the unseen family ``--heldout``. Every length of a model scores the same
``span`` tokens (``--lm_windows`` windows at the longest length), so the rows differ only in
how much context each window gives. The trained DRT is also scored without its retrieval
(``gca_jax.model.without_retrieval``: rows ``drt_no_retrieval``), and ``--lm_models`` can add
the sliding window at the DRT's MLP width (``sliding_window_narrow``).

Adds ``lm_ppl`` (rows ``{model, run, length, multiplier, ppl, haystack, ...}``), ``lm_models``
(parameters, steps, training seconds per model) and ``lm_targets`` (the issue's comparisons)
to the replicate results.
"""

from __future__ import annotations

import os
import time

from absl import flags

from experiments import demo

LM_MULTIPLIERS = flags.DEFINE_string("lm_multipliers", "1,4,8",
                                     "lm stage: perplexity lengths of every model (x training length).")
LM_LONG_MULTIPLIERS = flags.DEFINE_string("lm_long_multipliers", "64",
                                          "lm stage: further lengths for the DRT and sliding window.")
LM_WINDOWS = flags.DEFINE_integer("lm_windows", 2, "lm stage: windows at the longest length; every "
                                  "length scores the same tokens.")

LM_MODELS = flags.DEFINE_string("lm_models", "drt,sliding_window,full_attention,full_attention_rope",
                                "lm stage: the models to train and score (add "
                                "'sliding_window_narrow': the sliding window at the DRT's MLP width).")
LM_ABLATE = flags.DEFINE_bool("lm_ablate_retrieval", True, "lm stage: also score the trained DRT with "
                              "its GCA outputs zeroed (rows 'drt_no_retrieval': what retrieval is worth).")

# model name in the rows -> registered experiment
MODELS = {"drt": "lm_drt", "sliding_window": "lm_sliding_window",
          "full_attention": "lm_full_attention", "full_attention_rope": "lm_full_attention_rope"}
# diagnostics, on request (--lm_models): the sliding window with the DRT's MLP width
EXTRA = {"sliding_window_narrow": "lm_sliding_window_narrow"}
ABLATED = "drt_no_retrieval"  # rows of the trained DRT scored by ``without_retrieval``
LONG = ("drt", "sliding_window", "sliding_window_narrow")  # also scored at the long lengths
ORDER = (*MODELS, ABLATED, *EXTRA)  # the table's rows


def _at(rows: list[dict], model: str, haystack: str, mult: int) -> float | None:
  for r in rows:
    if (r["model"], r["haystack"], r["multiplier"]) == (model, haystack, mult) and not r.get("not_run"):
      return r["ppl"]
  return None


def targets(rows: list[dict]) -> dict:
  """Per haystack, the issue's comparisons: DRT vs sliding window and vs ALiBi full attention
  at 1x, the DRT's change from 1x at its longest length, RoPE's 8x (longest) over its 1x."""
  out = {}
  for hay in sorted({r["haystack"] for r in rows}):
    drt1, sw1, fa1 = (_at(rows, m, hay, 1) for m in ("drt", "sliding_window", "full_attention"))
    longest = max((r["multiplier"] for r in rows if r["model"] == "drt" and r["haystack"] == hay),
                  default=1)
    rope = sorted(r["multiplier"] for r in rows if r["model"] == "full_attention_rope"
                  and r["haystack"] == hay and not r.get("not_run"))
    t = {}
    if drt1 and sw1:
      t["drt_1x_le_sliding_window"] = drt1 <= sw1
    if drt1 and fa1:
      t["drt_vs_full_attention_1x_pct"] = round(100 * (drt1 / fa1 - 1), 2)
    off1 = _at(rows, ABLATED, hay, 1)
    if drt1 and off1:  # how much worse the trained DRT is without what it retrieves
      t["drt_without_retrieval_1x_pct"] = round(100 * (off1 / drt1 - 1), 2)
    drt_long = _at(rows, "drt", hay, longest)
    if drt1 and drt_long:
      t[f"drt_{longest}x_vs_1x_pct"] = round(100 * (drt_long / drt1 - 1), 2)
    if len(rope) > 1 and rope[0] == 1:
      r1, rl = _at(rows, "full_attention_rope", hay, 1), _at(rows, "full_attention_rope", hay, rope[-1])
      t[f"rope_{rope[-1]}x_over_1x"] = round(rl / r1, 3)
    out[hay] = t
  return out


def run_stage(workdir: str, overrides: list[str], cache, *, heldout: str, multipliers: list[int],
              long_multipliers: list[int], windows: int, models: tuple[str, ...] = tuple(MODELS),
              ablate: bool = True) -> dict:
  """Trains (or reuses) the ``lm_*`` runs of ``models`` (default the four of the comparison) in
  ``workdir`` and scores them, the DRT also without retrieval if ``ablate``; the results'
  ``lm_ppl``, ``lm_models`` and ``lm_targets``."""
  from experiments.registry import get_experiment
  from gca_jax.config import apply_overrides
  from gca_jax.model import without_retrieval
  known = {**MODELS, **EXTRA}
  unknown = [m for m in models if m not in known]
  if unknown or not models:
    raise ValueError(f"lm models {unknown or models} unknown; use a comma list of {sorted(known)}")
  exps = {m: apply_overrides(get_experiment(known[m]), list(overrides)) for m in models}
  first = next(iter(exps.values()))
  if any(e.data != first.data for e in exps.values()):
    raise ValueError("the lm runs must train on the same data; overrides changed one of them")
  demo.fetch(first)
  tok, hays = demo.corpus_haystacks(first, heldout)
  t = first.data.seq_len
  span_mult = max([*multipliers, *long_multipliers])
  rows, info = [], {}
  for model, exp in exps.items():
    run_dir = os.path.join(workdir, exp.name)
    t0 = time.time()
    summary = demo.train(exp, run_dir)
    step = demo.trained_step(run_dir)
    mults = sorted({*multipliers, *(long_multipliers if model in LONG else ())})
    # the same span of tokens at every length: windows scaled to this model's longest length
    nwin = windows * span_mult // max(mults)
    state: dict = {}
    t1 = time.time()
    for name, hay in hays.items():
      for r in demo.ppl_rows(model, exp, run_dir, step, cache, hay, mults, nwin, run=exp.name,
                             state=state, haystack=name):
        rows.append({**r, "model": model})
    if model == "drt" and ablate:
      off = {"model": without_retrieval(demo._model(exp, run_dir, state))}
      for name, hay in hays.items():
        for r in demo.ppl_rows(model, exp, run_dir, step, cache, hay, mults, nwin,
                               run=f"{exp.name}-no_retrieval", state=off, haystack=name):
          rows.append({**r, "model": ABLATED})
    info[model] = {"run": exp.name, "parameters": summary.get("parameters"), "steps": step,
                     "train_seconds": summary.get("wall_seconds"),
                     "eval_seconds": round(time.time() - t1, 1),
                     "stage_seconds": round(time.time() - t0, 1)}
  rows = demo.with_ppl_change(rows)
  return {"lm_ppl": rows, "lm_models": info, "lm_targets": targets(rows),
          "lm_train_length": t, "lm_span_tokens": t * span_mult * windows}


def run_from_flags(workdir: str, overrides: list[str], cache) -> dict:
  return run_stage(workdir, overrides, cache, heldout=demo.HELDOUT.value,
                   multipliers=demo._ints(LM_MULTIPLIERS.value),
                   long_multipliers=demo._ints(LM_LONG_MULTIPLIERS.value), windows=LM_WINDOWS.value,
                   models=tuple(m.strip() for m in LM_MODELS.value.split(",") if m.strip()),
                   ablate=LM_ABLATE.value)


def markdown(results: dict) -> str:
  """The perplexity table of the lm stage (empty without it)."""
  rows = results.get("lm_ppl")
  if not rows:
    return ""
  t = results.get("lm_train_length", 1)
  hays = sorted({r["haystack"] for r in rows}, key=lambda h: (h != demo.VALIDATION, h))
  mults = sorted({r["multiplier"] for r in rows})
  models = [m for m in ORDER if any(r["model"] == m for r in rows)]
  params = {m: v.get("parameters") for m, v in results.get("lm_models", {}).items()}
  head = ["model", "parameters", "haystack"] + [f"{m}x ({m * t:,})" for m in mults]
  lines = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for m in models:
    for h in hays:
      cells = [m, f"{params.get('drt' if m == ABLATED else m) or 0:,}", demo.haystack_label(h)]
      for x in mults:
        r = next((r for r in rows if (r["model"], r["haystack"], r["multiplier"]) == (m, h, x)), None)
        cells.append("" if r is None else "not run" if r.get("not_run") else
                     f"{r['ppl']:.2f} ({r['ppl_change_pct']:+.1f}%)")
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
