"""``make replicate``: the demo's claims with tighter statistics, longer contexts, 2-hop and a
mini ablation. Hours on 2 CPU cores; every stage is cached, so reruns only do what is missing.

  python -m experiments.replicate --workdir=runs/replicate [--stages=single,16m,2hop,ablation,lm]

Stages (``--stages``, comma list):

* ``single``: ``demo_drt`` (trained here, or reused from ``--demo_workdir`` when it holds a
  finished run of the same experiment) on single passkey at ``--single_multipliers`` (default
  1x, 4x, 16x, 64x, 256x, 1024x the training length) with ``--samples`` per length (default 300) and a 95% lower confidence bound on the accuracy
  (Clopper-Pearson with scipy, Wilson otherwise; both are reported when scipy is present), and
  perplexity 1x..64x as in the demo, on both of the demo's haystacks (the validation split and
  the unseen family ``--heldout``).
* ``16m``: single passkey at 2^24 tokens (rounded down to a multiple of the training length)
  with ``--samples_16m`` samples (default 10), on both haystacks. They are far shorter, so the
  haystack repeats (``gca_jax.evals.haystack.window`` wraps); the needle is unique.
* ``2hop``: sweep ``--hop_sweep`` (default ``demo_2hop_top8``; ``demo_2hop_groups`` is the demo's
  top-3, 120-token one): 2-hop passkey, 1 vs 2 retrieval groups, each trained and evaluated
  at 1x..64x (``--samples`` per length up to 64x) on the 2-hop task (validation split).
* ``ablation``: sweep ``demo_ablation`` (Gumbel off, top-k 2 and 4, chunk 16 and 32), each
  trained like ``demo_drt`` and evaluated on single passkey at 1x, 16x, 256x
  (``--ablation_samples`` per length, default 100).

The 2-hop and ablation runs also get held-out perplexity at ``--sweep_ppl_multipliers``; the
2-hop runs also retrieval traces (``experiments/hop_traces.py``, results' ``hop_traces``).

* ``lm``: language modelling without needles, the DRT against a sliding-window LM and full
  attention (ALiBi, RoPE) of its parameter count (``experiments/lm_stage.py``); adds
  ``lm_ppl`` rows ``{model, length, ppl, haystack, ...}``, ``lm_models`` and ``lm_targets``.

Every stage records its wall time and the process's peak resident memory so far
(``timings_seconds``, ``peak_rss_gb``).

Writes ``<workdir>/results.json`` in the demo's form (``train_length``, ``passkey`` rows
``{model, run, variant, haystack, length, samples, accuracy, exact_match, ci95_low, ...}``,
``ppl`` rows naming their ``haystack`` too),
plus ``results.md``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402

from gca_jax.flagdefs import define  # noqa: E402

from experiments import demo  # noqa: E402  (defines the demo's flags too; only ours are used)
from experiments import hop_traces, lm_stage  # noqa: E402  (2-hop traces, the lm stage; their flags)

STAGES = flags.DEFINE_string("stages", "single,16m,2hop,ablation,lm", "Stages to run, in order.")
DEMO_WORKDIR = flags.DEFINE_string("demo_workdir", "runs/demo",
                                   "A demo folder whose finished demo_drt run may be reused.")
SAMPLES = define("integer", "samples", 300, "Passkey samples per length (single, 2-hop).")
SINGLE_MULTIPLIERS = flags.DEFINE_string("single_multipliers", "1,4,16,64,256,1024",
                                          "Single-passkey lengths of the single stage (multiples "
                                          "of the training length).")
SAMPLES_16M = flags.DEFINE_integer("samples_16m", 10, "Passkey samples at 16M tokens.")
LENGTH_16M = flags.DEFINE_integer("length_16m", 1 << 24, "The '16M' length (tokens).")
ABLATION_SAMPLES = flags.DEFINE_integer("ablation_samples", 100, "Passkey samples per length in "
                                        "the ablation stage.")
ABLATION_MULTIPLIERS = flags.DEFINE_string("ablation_multipliers", "1,16,256",
                                           "Ablation passkey lengths (multiples of training length).")
SWEEP_PPL_MULTIPLIERS = flags.DEFINE_string("sweep_ppl_multipliers", "1,64",
                                            "Perplexity lengths of the 2-hop and ablation runs.")
HOP_MULTIPLIERS = flags.DEFINE_string("hop_multipliers", "1,4,16,64", "2-hop passkey lengths.")
HAYSTACKS = flags.DEFINE_string("haystacks", "", "Haystacks the single and 16m stages score, in "
                                "order: comma list of 'validation' and the --heldout family "
                                "(empty: both, validation first).")
MEMORY_BUDGET_GB = flags.DEFINE_float("replicate_memory_budget_gb", 20.0,
                                      "Memory budget per evaluation batch (16M needs ~9 GB).")

Z95 = 1.959963984540054  # two-sided 95%: the one-sided bound at 97.5%


def wilson_low(hits: int, n: int, z: float = Z95) -> float:
  """Lower end of the Wilson score interval."""
  if n == 0:
    return 0.0
  p = hits / n
  den = 1 + z * z / n
  centre = p + z * z / (2 * n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return max(0.0, (centre - half) / den)


def clopper_pearson_low(hits: int, n: int, alpha: float = 0.05) -> float | None:
  """Lower end of the exact (Clopper-Pearson) interval, or None without scipy."""
  try:
    from scipy.stats import beta
  except ImportError:
    return None
  return 0.0 if hits == 0 else float(beta.ppf(alpha / 2, hits, n - hits + 1))


def with_ci(row: dict) -> dict:
  if row.get("not_run") or row.get("accuracy") is None:
    return row
  n = int(row["samples"])
  hits = int(round(row["accuracy"] * n))
  cp = clopper_pearson_low(hits, n)
  out = {**row, "hits": hits, "ci95_wilson_low": wilson_low(hits, n)}
  if cp is not None:
    out["ci95_clopper_pearson_low"] = cp
  out["ci95_low"] = cp if cp is not None else out["ci95_wilson_low"]
  out["ci95_method"] = "clopper_pearson" if cp is not None else "wilson"
  return out


def peak_rss_gb() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


def _train_or_reuse(exp, workdir: str) -> str:
  """The run folder of a finished ``exp``: the demo's when it matches, else trained here."""
  cand = os.path.join(DEMO_WORKDIR.value, exp.name)
  step = demo.trained_step(cand)
  if step is not None and step >= exp.train.steps and demo.same_experiment(exp, cand):
    demo._log(f"[{exp.name}] reusing the finished demo run in {cand}")
    return cand
  run_dir = os.path.join(workdir, exp.name)
  demo.train(exp, run_dir)
  return run_dir


def pick_haystacks(known: list[str], spec: str) -> list[str]:
  """The haystack names in ``spec`` (comma list, in that order; empty: all of ``known``)."""
  names = [n.strip() for n in spec.split(",") if n.strip()]
  unknown = [n for n in names if n not in known]
  if unknown:
    from gca_jax.config import ConfigError
    raise ConfigError(f"--haystacks={spec!r}: unknown haystack(s) {unknown}; use a comma list of "
                      f"{known} (the unseen family is chosen with --heldout)")
  return names or list(known)


def run(workdir: str, overrides: list[str], stages: list[str]) -> dict:
  from experiments.registry import expand_sweep, get_experiment
  from gca_jax.config import apply_overrides
  t0 = time.time()
  held = [demo.heldout_name(demo.HELDOUT.value)] if demo.HELDOUT.value else []
  scored_names = pick_haystacks([demo.VALIDATION, *held], HAYSTACKS.value)  # before any output
  os.makedirs(workdir, exist_ok=True)
  drt = demo.experiment(demo.DRT, overrides)
  demo.fetch(drt)
  tok, hays = demo.corpus_haystacks(drt, demo.HELDOUT.value)
  hay = hays[demo.VALIDATION]
  scored = {n: hays[n] for n in scored_names}
  cache = demo.EvalCache(os.path.join(workdir, "eval_cache.json"))
  t = drt.data.seq_len
  passkey, ppl, timings, peak, traces = [], [], {}, {}, []

  def stage_done(name: str, started: float) -> None:
    timings[name] = time.time() - started
    peak[name] = round(peak_rss_gb(), 2)
  mults = demo._ints(SINGLE_MULTIPLIERS.value)

  if "single" in stages or "16m" in stages:
    run_dir = _train_or_reuse(drt, workdir)
    step = demo.trained_step(run_dir)
    state: dict = {}
    if "single" in stages:
      t1 = time.time()
      for name, h in scored.items():
        passkey += demo.passkey_rows(demo.DRT, drt, run_dir, step, cache, h, tok,
                                     [(m, SAMPLES.value) for m in mults], state=state, haystack=name)
        ppl += demo.ppl_rows(demo.DRT, drt, run_dir, step, cache, h,
                             demo._ints(demo.PPL_MULTIPLIERS.value), demo.PPL_WINDOWS.value,
                             state=state, haystack=name)
      stage_done("single", t1)
    if "16m" in stages:
      t1 = time.time()
      from gca_jax.evals import runtime
      m = LENGTH_16M.value // t
      reason = runtime.budget_reason(drt.model, 1, m * t, 1024, MEMORY_BUDGET_GB.value)
      for name, h in scored.items():
        if reason:
          passkey.append(runtime.not_run({"model": demo.DRT, "run": drt.name, "variant": "single",
                                          "haystack": name, "length": m * t, "multiplier": m,
                                          "samples": SAMPLES_16M.value, "accuracy": None}, reason))
        else:
          passkey += demo.passkey_rows(demo.DRT, drt, run_dir, step, cache, h, tok,
                                       [(m, SAMPLES_16M.value)], state=state, haystack=name)
      stage_done("16m", t1)

  sweeps = []
  if "2hop" in stages:
    sweeps.append((hop_traces.HOP_SWEEP.value, "multihop", demo._ints(HOP_MULTIPLIERS.value), SAMPLES.value))
  if "ablation" in stages:
    sweeps.append(("demo_ablation", "single", demo._ints(ABLATION_MULTIPLIERS.value),
                   ABLATION_SAMPLES.value))
  for sweep, variant, sweep_mults, sweep_samples in sweeps:
    t1 = time.time()
    for r in expand_sweep(sweep):
      exp = apply_overrides(get_experiment(r.experiment), [*r.overrides, *overrides])
      run_dir = os.path.join(workdir, exp.name)
      demo.train(exp, run_dir)
      passkey += demo.passkey_rows(demo.DRT, exp, run_dir, demo.trained_step(run_dir), cache, hay, tok,
                                   [(m, sweep_samples) for m in sweep_mults], variant=variant,
                                   run=exp.name)
      if variant == "multihop":
        traces += hop_traces.trace_run(run_dir, demo._ints(hop_traces.HOP_TRACE_MULTIPLIERS.value),
                                       hop_traces.HOP_TRACE_SAMPLES.value, hay, tok, log=demo._log)
      ppl += demo.ppl_rows(demo.DRT, exp, run_dir, demo.trained_step(run_dir), cache, hay,
                           demo._ints(SWEEP_PPL_MULTIPLIERS.value), demo.PPL_WINDOWS.value,
                           run=exp.name)
    stage_done(sweep, t1)

  lm = {}
  if "lm" in stages:
    t1 = time.time()
    lm = lm_stage.run_from_flags(workdir, overrides, cache)
    stage_done("lm", t1)

  results = {"train_length": t, "passkey": [with_ci(r) for r in passkey],
             "ppl": demo.with_ppl_change(ppl),
             "stages": stages, "overrides": list(overrides), "held_out_tokens": int(len(hay)),
             "haystacks": {h: {"tokens": int(len(v)), "unseen": h != demo.VALIDATION}
                           for h, v in hays.items()},
             "haystack_note": "lengths beyond a haystack repeat it (wrap-around)",
             "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
             "peak_rss_gb": peak,
             "provenance": demo.provenance_of(drt, hays)}
  results.update(lm, **({"hop_traces": traces} if traces else {}))
  with open(os.path.join(workdir, "results.json.tmp"), "w") as f:
    json.dump(results, f, indent=1)
  os.replace(os.path.join(workdir, "results.json.tmp"), os.path.join(workdir, "results.json"))
  lines = ["| run | variant | haystack | length | x train | samples | accuracy | 95% low | exact |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results["passkey"]:
    head = (f"| {r['run']} | {r['variant']} | {demo.haystack_label(demo._hay(r))} | {r['length']:,} "
            f"| {r['multiplier']}x | {r['samples']} |")
    if r.get("not_run"):
      lines.append(f"{head} not run: {r['reason']} | | |")
    else:
      lines.append(f"{head} {100 * r['accuracy']:.1f}% | {100 * r['ci95_low']:.1f}% | "
                   f"{100 * r['exact_match']:.1f}% |")
  lines += ["", "| run | haystack | length | x train | ppl | change from 1x |", "|---|---|---|---|---|---|"]
  for r in results["ppl"]:
    cell = (f"{r['ppl']:.2f} | {r['ppl_change_pct']:+.2f}%"
            if not r.get("not_run") else f"not run: {r['reason']} |")
    lines.append(f"| {r['run']} | {demo.haystack_label(demo._hay(r))} | {r['length']:,} | "
                 f"{r['multiplier']}x | {cell} |")
  table = "\n".join(lines) + "\n" + lm_stage.markdown(results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table)
  demo._log("\n" + table + f"\nwrote {workdir}/results.json in {(time.time() - t0) / 60:.1f} min")
  return results


def main(argv) -> int:
  def body() -> int:
    stages = [s.strip() for s in STAGES.value.split(",") if s.strip()]
    bad = set(stages) - {"single", "16m", "2hop", "ablation", "lm"}
    if bad:
      print(f"error: unknown --stages {sorted(bad)}; use single,16m,2hop,ablation,lm", file=sys.stderr)
      return 2
    workdir = flags.FLAGS["workdir"].value if flags.FLAGS["workdir"].present else "runs/replicate"
    run(workdir, demo.SET.value, stages)
    return 0
  return demo.cli_main(argv, body)

if __name__ == "__main__":
  app.run(main)
