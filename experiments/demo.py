"""``make demo``: a tiny DRT trained on real text with passkey needles, evaluated far past its
training length.

  python -m experiments.demo --workdir=runs/demo [--baselines] [--set=section.field=value ...]

The data cache is ``$GCA_JAX_CACHE`` or ``<repo>/.cache/gca_jax`` (``--set=data.cache_dir=DIR``).

Stages (each skipped when its output already exists, so a rerun only does what is missing):

1. fetch the public-domain ``books`` corpus into the data cache (``gca_jax.data.fetch``);
2. build the sentencepiece tokenizer (digits split) and the token store (cached);
3. train ``demo_drt`` (``experiments/registry.py``) in ``<workdir>/demo_drt`` with
   ``gca_jax.train.loop.train`` (resumes from the last checkpoint; a finished run is reused): a
   two-stage curriculum (``data.curriculum``), 1200 steps on 120-token windows then 600 on
   480-token windows, the training length of every "x train" below;
4. evaluate on two haystacks: the training corpus's held-out (validation) split and a text
   family the model never saw (``--heldout``, default ``python_docs``: the Python manual,
   tokenised with the run's tokenizer, which never saw it either): single passkey from 1x to
   1024x the training length (``--passkey_samples`` per length up to 64x,
   ``--passkey_long_samples`` beyond) and perplexity from 1x to 64x over the same tokens at
   every length;
5. write ``<workdir>/results.json``, ``results.md`` (the printed table) and ``results.png``.

``--baselines`` adds ``demo_sliding_window`` and ``demo_full_attention`` (same size, data,
samples and steps). Full attention costs O(L^2) per sequence; lengths above
``--full_attention_max_length`` are reported as not run, with the reason.

Passkey ``accuracy`` is the paper's metric (docs/method.md, Evaluation protocols: the first answer token under
teacher forcing, with the anti-leak zero); ``exact_match`` is all answer digits under greedy
decoding. Evaluated rows are cached in ``<workdir>/eval_cache.json`` keyed by model, training
step, haystack, length, samples and seed. Every passkey and perplexity row names its
``haystack`` (``validation`` or the held-out family).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags, logging  # noqa: E402

from gca_jax.flagdefs import define  # noqa: E402

WORKDIR = define("string", "workdir", "runs/demo", "Demo folder: runs, evals, results.")
BASELINES = flags.DEFINE_bool("baselines", False, "Also train/evaluate the sliding-window and "
                              "full-attention baselines of equal size.")
SET = define("multi_string", "set", [], "Override section.field=value for every model.")
MULTIPLIERS = flags.DEFINE_string("multipliers", "1,2,4,8,16,32,64,128,256,512,1024",
                                  "Passkey lengths as multiples of the training length.")
PPL_MULTIPLIERS = flags.DEFINE_string("ppl_multipliers", "1,2,4,8,16,32,64",
                                      "Perplexity lengths as multiples of the training length.")
PASSKEY_SAMPLES = flags.DEFINE_integer("passkey_samples", 100, "Passkey samples per length <= 64x.")
PASSKEY_LONG_SAMPLES = flags.DEFINE_integer("passkey_long_samples", 20,
                                            "Passkey samples per length > 64x.")
PPL_WINDOWS = define("integer", "ppl_windows", 8, "Held-out windows at the longest perplexity "
                                   "length; every length scores the same tokens.")
FA_MAX = flags.DEFINE_integer("full_attention_max_length", 4096,
                              "Longest passkey length run for full attention (O(L^2)).")
FA_PPL_MAX = flags.DEFINE_integer("full_attention_max_ppl_length", 16384,
                                  "Longest perplexity length run for full attention.")
EVAL_SEED = define("integer", "eval_seed", 0, "Seed of the passkey samples.")
HELDOUT = define("string", "heldout", "python_docs",
                 "Unseen text family evaluated beside the validation split: a fetched corpus "
                 "sharing no source with the training corpus, or a path to text files; '' for "
                 "the validation split only.")

DRT, SLIDING, FULL = "drt", "sliding_window", "full_attention"
EXPERIMENTS = {DRT: "demo_drt", SLIDING: "demo_sliding_window", FULL: "demo_full_attention"}
LONG_FROM = 64  # multipliers above this use the long sample count
VALIDATION = "validation"  # the haystack name of the training corpus's held-out split


def _log(msg: str) -> None:
  print(msg, flush=True)


def _ints(text: str) -> list[int]:
  return sorted({int(x) for x in str(text).split(",") if x.strip()})


def experiment(kind: str, overrides: list[str]):
  from experiments.registry import get_experiment
  from gca_jax.config import apply_overrides
  return apply_overrides(get_experiment(EXPERIMENTS[kind]), list(overrides))


def fetch(exp) -> None:
  """Stage 1: the corpus (skipped for a corpus given as a folder path)."""
  from gca_jax.data import fetch as fetch_lib
  from gca_jax.data import sources
  if exp.data.corpus in sources.CORPORA:
    fetch_lib.fetch_corpus(exp.data.corpus, exp.data.cache_dir, log=_log)


def check_heldout(exp, heldout: str) -> None:
  """Exits with the reason when ``heldout`` shares a source with the training corpus."""
  from gca_jax.data import sources
  if heldout in sources.CORPORA:
    shared = set(sources.CORPORA[heldout]) & set(sources.CORPORA.get(exp.data.corpus, ()))
    if shared or heldout == exp.data.corpus:
      raise SystemExit(f"error: --heldout={heldout} shares {sorted(shared) or [heldout]} with the "
                       f"training corpus {exp.data.corpus!r}; pick a family it was not trained on")
  if heldout_name(heldout) == VALIDATION:
    raise SystemExit(f"error: --heldout={heldout}: the name {VALIDATION!r} is the validation split's")


def heldout_name(heldout: str) -> str:
  """The haystack name of the unseen family ``heldout`` (a corpus name, or a folder's name)."""
  from gca_jax.data import sources
  return heldout if heldout in sources.CORPORA else os.path.basename(os.path.normpath(heldout))


def haystacks(exp, tok, store, heldout: str, log=_log) -> dict:
  """Haystack tokens by name: the validation split of the training corpus and the unseen
  family ``heldout`` (all of its documents, tokenised with ``tok``; fetched if named)."""
  import numpy as np

  from gca_jax.data import fetch as fetch_lib
  from gca_jax.data import sources, token_store
  out = {VALIDATION: np.asarray(token_store.load_split(store, "validation").tokens)}
  if not heldout:
    return out
  check_heldout(exp, heldout)
  if heldout in sources.CORPORA:
    fetch_lib.fetch_corpus(heldout, exp.data.cache_dir, log=log)
  name = heldout_name(heldout)
  held = token_store.token_store_for(heldout, tok, exp.data.cache_dir, 0.0, log=log)
  out[name] = np.asarray(token_store.load_split(held, "train").tokens)  # val_fraction 0: all of it
  return out


def corpus_haystacks(exp, heldout: str, log=_log) -> tuple:
  """(tokenizer, ``haystacks``) of ``exp``'s fetched corpus: the tokenizer and token store are
  built on first use (cached), the unseen family ``heldout`` is fetched if named."""
  from gca_jax.data import token_store, tokenizer
  tok = tokenizer.build_tokenizer(exp.data.corpus, exp.data.vocab_size, exp.data.cache_dir, log=log)
  store = token_store.token_store_for(exp.data.corpus, tok, exp.data.cache_dir, exp.data.val_fraction,
                                      log=log)
  return tok, haystacks(exp, tok, store, heldout, log=log)


def trained_step(workdir: str) -> int | None:
  """The step of a finished training run in ``workdir`` (None if not finished)."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  s = json.load(open(path))
  return None if s.get("preempted") else int(s.get("step", 0))


def run_identity(exp) -> dict:
  """What names a run: every section of ``exp`` but ``execution`` (kernels, blocking, compiler
  options change no parameter, so a run is reused and scored under other settings)."""
  from gca_jax.config import to_dict
  return {k: v for k, v in json.loads(json.dumps(to_dict(exp))).items() if k != "execution"}


def run_fingerprint(exp) -> str:
  """12 hex digits of ``run_identity``: part of every eval-cache key, so a run folder deleted and
  trained again under other settings (another learning rate, say) is scored afresh."""
  return hashlib.sha1(json.dumps(run_identity(exp), sort_keys=True).encode()).hexdigest()[:12]


def same_experiment(exp, workdir: str) -> bool:
  """Whether ``workdir`` holds a run of ``exp`` (``run_identity`` equal)."""
  from gca_jax.config import ConfigError, from_dict
  path = os.path.join(workdir, "experiment.json")
  if not os.path.exists(path):
    return False
  # through from_dict, so a field added since the run was saved reads as its default
  try:
    saved = from_dict(json.load(open(path)))
  except ConfigError:
    return False
  return run_identity(saved) == run_identity(exp)


def train(exp, workdir: str) -> dict:
  """Stage 3: trains (or resumes, or reuses) ``exp`` in ``workdir``."""
  step = trained_step(workdir)
  exp_path = os.path.join(workdir, "experiment.json")
  same = same_experiment(exp, workdir)
  if step is not None and step >= exp.train.steps and same:
    _log(f"[{exp.name}] finished run found in {workdir} (step {step}): reusing it")
    return json.load(open(os.path.join(workdir, "summary.json")))
  if os.path.exists(exp_path) and not same:
    raise SystemExit(f"error: {workdir} holds a run of a different experiment; remove it or use "
                     "another --workdir")
  from gca_jax.train.loop import train as train_loop
  return train_loop(exp, workdir)


class EvalCache:
  """Evaluated rows in ``<workdir>/eval_cache.json``, written after every row. Each write
  merges with the rows on disk under a file lock, so processes sharing a workdir (say two
  ``make replicate`` stages run side by side) keep each other's rows."""

  def __init__(self, path: str):
    self.path = path
    self.rows = json.load(open(path)) if os.path.exists(path) else {}

  def get(self, key: str):
    return self.rows.get(key)

  def put(self, key: str, row: dict) -> None:
    if row.get("not_run"):  # cheap to redo, and the reason may change with the settings
      return
    self.rows[key] = row
    with open(self.path + ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if os.path.exists(self.path):
        self.rows = {**json.load(open(self.path)), **self.rows}
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        json.dump(self.rows, f, indent=1)
      os.replace(tmp, self.path)


def passkey_batch(length: int, samples: int) -> int:
  """Samples per batch: about 12K tokens per batch, whole batches of the sample count."""
  b = max(1, min(samples, 50, 12288 // length))
  while samples % b:
    b -= 1
  return b


def passkey_rows(kind: str, exp, run_dir: str, step: int, cache: EvalCache, hay, tok,
                 plan: list[tuple[int, int]], *, variant: str = "single", run: str | None = None,
                 seed: int = 0, fa_max: int = 4096, state: dict | None = None,
                 haystack: str = VALIDATION) -> list[dict]:
  """Passkey rows for ``plan`` = [(multiplier, samples)] on the haystack ``hay`` named
  ``haystack`` (cached rows are reused)."""
  from gca_jax.evals import passkey, runtime
  state = {} if state is None else state  # the loaded model and its engines, shared by calls
  t = exp.data.seq_len
  run = run or exp.name
  rows = []
  for m, samples in plan:
    n = t * m
    key = f"passkey|{run}|{run_fingerprint(exp)}|{variant}|step{step}|{haystack}|L{n}|n{samples}|seed{seed}"
    row = cache.get(key)
    if row is None:
      base = {"model": kind, "run": run, "variant": variant, "haystack": haystack, "length": n,
              "multiplier": m, "samples": samples}
      if kind == FULL and n > fa_max:
        row = runtime.not_run({**base, "accuracy": None, "exact_match": None},
                              f"full attention is O(L^2) per sequence; lengths above {fa_max} "
                              "tokens are not run in the demo (--full_attention_max_length)")
      else:
        r = passkey.passkey_eval(_model(exp, run_dir, state), tok, hay, [n], variant=variant,
                                 samples=samples, seed=seed, token_cnt=passkey.trained_token_cnt(exp, variant),
                                 alphabet=passkey.trained_alphabet(exp, variant),
                                 batch=passkey_batch(n, samples), segment_chunks=1024,
                                 engines=state.setdefault("engines", {}),
                                 model_name=kind, log=lambda *_: None)[0]
        row = {**base, **{k: r[k] for k in ("accuracy", "exact_match", "seconds", "not_run", "reason")
                          if k in r}}
      cache.put(key, row)
    _log(f"  passkey {run:24s} {haystack:12s} {m:6d}x {n:9d} tokens: " + (
        f"accuracy {row['accuracy']:.3f} exact {row['exact_match']:.3f} ({row['samples']} samples, "
        f"{row.get('seconds', 0):.0f}s)" if not row.get("not_run") else f"not run ({row['reason']})"))
    rows.append(row)
  return rows


def ppl_rows(kind: str, exp, run_dir: str, step: int, cache: EvalCache, hay, multipliers: list[int],
             windows: int, *, run: str | None = None, fa_max: int = 16384,
             state: dict | None = None, haystack: str = VALIDATION) -> list[dict]:
  """Perplexity rows on ``hay`` (named ``haystack``); every length scores the same ``windows``
  x longest-length tokens."""
  from gca_jax.evals import perplexity, runtime
  state = {} if state is None else state
  t = exp.data.seq_len
  run = run or exp.name
  span = t * max(multipliers) * windows
  if span > len(hay):
    raise ValueError(f"perplexity needs {span} tokens, the {haystack} haystack has {len(hay)}: "
                     "lower --ppl_windows or --ppl_multipliers")
  rows = []
  for m in multipliers:
    n = t * m
    key = f"ppl|{run}|{run_fingerprint(exp)}|step{step}|{haystack}|L{n}|tokens{span}"
    row = cache.get(key)
    if row is None:
      base = {"model": kind, "run": run, "haystack": haystack, "length": n, "multiplier": m}
      if kind == FULL and n > fa_max:
        row = runtime.not_run({**base, "ppl": None},
                              f"full attention is O(L^2) per sequence; lengths above {fa_max} "
                              "tokens are not run in the demo (--full_attention_max_ppl_length)")
      else:
        nwin = span // n
        r = perplexity.perplexity_eval(_model(exp, run_dir, state), hay[:span], [n],
                                       max_windows=nwin, batch=passkey_batch(n, nwin),
                                       segment_chunks=1024,
                                       engines=state.setdefault("engines", {}), model_name=kind,
                                       log=lambda *_: None)[0]
        row = {**base, **{k: r[k] for k in ("ppl", "nll", "windows", "tokens", "seconds", "not_run",
                                            "reason") if k in r}}
      cache.put(key, row)
    _log(f"  ppl     {run:24s} {haystack:12s} {m:6d}x {n:9d} tokens: " + (
        f"{row['ppl']:.3f} ({row['windows']} windows, {row.get('seconds', 0):.0f}s)"
        if not row.get("not_run") else f"not run ({row['reason']})"))
    rows.append(row)
  return rows


def _model(exp, run_dir: str, state: dict):
  if "model" not in state:
    from gca_jax.evals.cli import load_model
    state["model"], _ = load_model(exp, run_dir, False)
  return state["model"]


def evaluate(kind: str, exp, run_dir: str, step: int, cache: EvalCache, hays: dict,
             tok) -> tuple[list, list]:
  """Stage 4 for one model: passkey and perplexity rows on every haystack."""
  state: dict = {}
  plan = [(m, PASSKEY_SAMPLES.value if m <= LONG_FROM else PASSKEY_LONG_SAMPLES.value)
          for m in _ints(MULTIPLIERS.value)]
  pk, pp = [], []
  for name, hay in hays.items():
    pk += passkey_rows(kind, exp, run_dir, step, cache, hay, tok, plan, seed=EVAL_SEED.value,
                       fa_max=FA_MAX.value, state=state, haystack=name)
    pp += ppl_rows(kind, exp, run_dir, step, cache, hay, _ints(PPL_MULTIPLIERS.value),
                   PPL_WINDOWS.value, fa_max=FA_PPL_MAX.value, state=state, haystack=name)
  return pk, pp


def _cell(row: dict | None, fmt) -> str:
  if row is None:
    return ""
  if row.get("not_run"):
    return "not run"
  return fmt(row)


def _hay(row: dict) -> str:
  return row.get("haystack", VALIDATION)


def haystack_label(name: str) -> str:
  return "validation" if name == VALIDATION else f"{name} (unseen)"


def _layout(results: dict) -> tuple[list[str], list[str]]:
  """Models (DRT first) and haystacks (validation first) present in the rows."""
  rows = results["passkey"] + results["ppl"]
  models = [m for m in (DRT, SLIDING, FULL) if any(r["model"] == m for r in rows)]
  hays = sorted({_hay(r) for r in rows}, key=lambda h: (h != VALIDATION, h))
  return models, hays


def with_ppl_change(rows: list[dict]) -> list[dict]:
  """``rows`` with ``ppl_change_pct``: the change from the shortest length of the same run and
  haystack, in percent (``report.percent_change``); not-run rows are left as they are."""
  from gca_jax.evals import report
  out = [dict(r) for r in rows]
  for key in {(r.get("run"), r["model"], _hay(r)) for r in out if not r.get("not_run")}:
    same = sorted((r for r in out if (r.get("run"), r["model"], _hay(r)) == key
                   and not r.get("not_run")), key=lambda r: r["length"])
    for r, pct in zip(same, report.percent_change([r["ppl"] for r in same])):
      r["ppl_change_pct"] = pct
  return out


def markdown(results: dict) -> str:
  """The demo table: passkey accuracy (exact match) and perplexity (change from 1x) per length,
  model and haystack."""
  models, hays = _layout(results)
  t = results["train_length"]
  lengths = sorted({r["length"] for r in results["passkey"]} | {r["length"] for r in results["ppl"]})
  pk = {(r["model"], _hay(r), r["length"]): r for r in results["passkey"]}
  pp = {(r["model"], _hay(r), r["length"]): r for r in with_ppl_change(results["ppl"])}
  cols = [(m, h) for m in models for h in hays]
  head = (["length", "x train"] + [f"passkey {m}, {haystack_label(h)}" for m, h in cols]
          + [f"ppl {m}, {haystack_label(h)}" for m, h in cols])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for n in lengths:
    cells = [f"{n:,}", f"{n / t:g}x"]
    cells += [_cell(pk.get((m, h, n)), lambda r: f"{100 * r['accuracy']:.0f}% "
                    f"({100 * r['exact_match']:.0f}%) n={r['samples']}") for m, h in cols]
    cells += [_cell(pp.get((m, h, n)), lambda r: f"{r['ppl']:.2f} "
                    f"({r['ppl_change_pct']:+.1f}%)") for m, h in cols]
    lines.append("| " + " | ".join(cells) + " |")
  reasons = sorted({r["reason"] for r in results["passkey"] + results["ppl"] if r.get("not_run")})
  notes = "".join(f"\nnot run: {r}" for r in reasons)
  return ("Passkey: accuracy of the first answer digit (teacher forced, docs/method.md, Evaluation "
          "protocols), in brackets all 5 digits by greedy decoding; n = samples. Haystacks: the "
          "training corpus's validation split, and a text family never trained on (unseen). "
          "Perplexity: the same tokens of each haystack at every length; in brackets the change "
          "from the shortest length.\n\n" + "\n".join(lines) + "\n" + notes + ("\n" if notes else ""))


def plot(results: dict, path: str) -> None:
  """Passkey (first digit, all digits) and perplexity change from 1x against length, one
  colour per model, solid on the validation split and dashed on the unseen family."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  models, hays = _layout(results)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  colours = {m: f"C{i}" for i, m in enumerate((DRT, SLIDING, FULL))}
  ppl = with_ppl_change(results["ppl"])
  for m in models:
    for h in hays:
      seen = h == VALIDATION  # unseen: dashed, open squares (visible over an equal solid line)
      style = dict(color=colours[m], ls="-" if seen else "--", marker="o" if seen else "s",
                   mfc=None if seen else "none", ms=5 if seen else 8,
                   label=f"{m}, {haystack_label(h)}")
      pk = sorted((r["length"], r["accuracy"], r["exact_match"]) for r in results["passkey"]
                  if r["model"] == m and _hay(r) == h and not r.get("not_run"))
      for ax, col in ((axes[0], 1), (axes[1], 2)):
        if pk:
          ax.plot([p[0] for p in pk], [100 * p[col] for p in pk], **style)
      pp = sorted((r["length"], r["ppl_change_pct"]) for r in ppl
                  if r["model"] == m and _hay(r) == h and not r.get("not_run"))
      if pp:
        axes[2].plot([p[0] for p in pp], [p[1] for p in pp], **style)
  t = results["train_length"]
  titles = (("single passkey, first digit", "accuracy (%)"),
            ("single passkey, all 5 digits", "exact match (%)"),
            ("perplexity change from 1x", "ppl change from 1x (%)"))
  for ax, (title, ylabel) in zip(axes, titles):
    ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"length (tokens; training length {t} dotted)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  for ax in axes[:2]:
    ax.set_ylim(-3, 103)
  axes[2].axhline(0, color="black", lw=0.8)
  lim = max([3.0] + [abs(r["ppl_change_pct"]) * 1.2 for r in ppl if not r.get("not_run")])
  axes[2].set_ylim(-lim, lim)
  fig.suptitle(f"tiny DRT ({results['parameters'].get(DRT, 0):,} parameters), trained at {t} tokens")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def provenance_of(exp, hays: dict) -> dict:
  """The host and the package archives behind ``exp``'s training corpus and each unseen haystack."""
  from gca_jax.provenance import provenance
  return provenance([exp.data.corpus, *(h for h in hays if h != VALIDATION)], exp.data.cache_dir)


def run(workdir: str, overrides: list[str], baselines: bool) -> dict:
  t0 = time.time()
  timings: dict[str, float] = {}
  kinds = [DRT, SLIDING, FULL] if baselines else [DRT]
  exps = {k: experiment(k, overrides) for k in kinds}
  drt = exps[DRT]
  os.makedirs(workdir, exist_ok=True)

  if HELDOUT.value:
    check_heldout(drt, HELDOUT.value)
  _log("== 1. corpus")
  fetch(drt)
  timings["fetch"] = time.time() - t0

  _log("== 2. tokenizer and token store")
  t1 = time.time()
  tok, hays = corpus_haystacks(drt, HELDOUT.value)
  timings["tokenizer"] = time.time() - t1
  _log("haystacks: " + ", ".join(f"{haystack_label(h)} {len(v):,} tokens" for h, v in hays.items()))

  summaries, steps = {}, {}
  for k in kinds:
    _log(f"== 3. train {exps[k].name}")
    t1 = time.time()
    summaries[k] = train(exps[k], os.path.join(workdir, exps[k].name))
    steps[k] = trained_step(os.path.join(workdir, exps[k].name)) or exps[k].train.steps
    timings[f"train_{k}"] = time.time() - t1

  cache = EvalCache(os.path.join(workdir, "eval_cache.json"))
  passkey_rows, ppl_rows = [], []
  for k in kinds:
    _log(f"== 4. evaluate {exps[k].name}")
    t1 = time.time()
    pk, pp = evaluate(k, exps[k], os.path.join(workdir, exps[k].name), steps[k], cache, hays, tok)
    passkey_rows += pk
    ppl_rows += pp
    timings[f"eval_{k}"] = time.time() - t1

  results = {
      "train_length": drt.data.seq_len,
      "passkey": passkey_rows,
      "ppl": ppl_rows,
      "parameters": {k: s.get("parameters") for k, s in summaries.items()},
      "train_steps": steps,
      "train_seconds": {k: s.get("wall_seconds") for k, s in summaries.items()},
      "experiments": {k: e.name for k, e in exps.items()},
      "overrides": list(overrides),
      "held_out_tokens": int(len(hays[VALIDATION])),
      "haystacks": {h: {"tokens": int(len(v)), "unseen": h != VALIDATION} for h, v in hays.items()},
      "corpus": drt.data.corpus,
      "provenance": provenance_of(drt, hays),
      "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
  }
  results["ppl"] = with_ppl_change(ppl_rows)
  longest = max((r["length"] for r in ppl_rows), default=0)
  results["drt_ppl_change_longest_vs_1x"] = {
      _hay(r): r["ppl_change_pct"] / 100 for r in results["ppl"]
      if r["model"] == DRT and r["length"] == longest and not r.get("not_run")}
  with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
    json.dump(results, f, indent=1)
  os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
  table = markdown(results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table)
  plot(results, os.path.join(workdir, "results.png"))
  timings["total"] = time.time() - t0
  _log("\n" + table)
  _log(f"wrote {workdir}/results.json, results.md, results.png in {timings['total'] / 60:.1f} min")
  return results


def cli_main(argv, body) -> int:
  """The demo and replicate entry: no positional arguments, quiet Orbax, ``body()``'s exit
  status, and a ConfigError printed as ``error: ...`` with exit status 2."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; use --flag=value")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  from gca_jax.config import ConfigError
  try:
    return body()
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def main(argv) -> int:
  def body() -> int:
    run(WORKDIR.value, SET.value, BASELINES.value)
    return 0
  return cli_main(argv, body)


if __name__ == "__main__":
  app.run(main)
