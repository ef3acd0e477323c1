"""Long-context inference benchmark: prefill speed and peak memory against length.

For the tiny DRT (ModelConfig defaults) at each length, in a fresh subprocess (so peak RSS is
per length), one passkey sample (single variant, random haystack) runs end to end through
``gca_jax.evals.passkey`` in tail-exact mode with the chunk memory offloaded to host numpy;
the full-exact prefill (retrieval against all past landmarks: quadratic) is timed at the
shorter lengths. Records tokens/s, peak RSS, the bytes the chunk memory physically needs and
the compile counts per stage (one per stage and shape, never per segment).

  python benchmarks/long_context.py [--lengths=64K,256K,1M,4M,16M] [--full_max=256K]
Writes benchmarks/results/long_context.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_LENGTHS = flags.DEFINE_string("lengths", "64K,256K,1M,4M,16M", "Lengths (tokens).")
_FULL_MAX = flags.DEFINE_string("full_max", "256K", "Longest length timed in full-exact mode.")
_SEG = flags.DEFINE_integer("segment_chunks", 512, "Chunks per prefill segment.")
_BATCH = flags.DEFINE_integer("batch", 1, "Samples per prefill batch.")
_ONE = flags.DEFINE_string("one", "", "Internal: run one length in this process (mode:length).")
_OUT = flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks/results/long_context.json"), "Output.")


def peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(mode: str, length: int) -> dict:
  import jax
  import numpy as np
  from flax import nnx

  from gca_jax.config import ModelConfig
  from gca_jax.evals import passkey
  from gca_jax.evals.haystack import ByteTokenizer, random_haystack
  from gca_jax.evals.templates import Templates
  from gca_jax.infer import Engine
  from gca_jax.model import build_model, count_params

  cfg = ModelConfig()
  model = build_model(cfg, rngs=nnx.Rngs(0))
  batch, seg = _BATCH.value, _SEG.value
  base = peak_rss()
  eng = Engine(model, segment_chunks=seg, offload=True)
  out = {"mode": mode, "length": length, "batch": batch, "segment_chunks": seg,
         "params": count_params(model), "rss_before_bytes": base}
  if mode == "tail":  # one passkey sample end to end
    tok = ByteTokenizer(cfg.vocab_size)
    hay = random_haystack(length + 1024, cfg.vocab_size, seed=1, avoid=(cfg.lmk_id,))
    tmpl = Templates("|key {key}|", "|key? ")
    samples = [passkey.build_sample(hay, length, np.random.default_rng([0, length, i]), tok, "single",
                                    None, cfg, tmpl) for i in range(batch)]
    del hay
    stores = []
    orig = eng.new_state

    def new_state(*a, **k):
      s = orig(*a, **k)
      stores.append(s.memory)
      return s

    eng.new_state = new_state
    # warm-up compile on a short sample (the same stage shapes except the tail's length)
    t0 = time.perf_counter()
    passkey.score_batch(model, eng, [passkey.build_sample(
        np.full(4096, 65, np.int32), 3 * seg * cfg.chunk_size, np.random.default_rng(0), tok, "single",
        None, cfg, tmpl)] * batch)
    out["warmup_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    hit, exact = passkey.score_batch(model, eng, samples)
    dt = time.perf_counter() - t0
    mem = stores[-1]
    out.update(seconds=round(dt, 2), tokens_per_s=round(batch * length / dt), hit=hit.tolist(),
               exact=exact.tolist(), chunks=mem.count, chunk_memory_bytes=mem.nbytes())
  else:  # full-exact prefill (every position, retrieval against all past landmarks)
    x = np.random.default_rng(0).integers(1, cfg.vocab_size - 1, (batch, length)).astype(np.int32)
    st = eng.new_state(batch, length)
    eng.prefill(st, x[:, :2 * seg * cfg.chunk_size])  # warm-up compile
    st = eng.new_state(batch, length)
    t0 = time.perf_counter()
    eng.prefill(st, x)
    jax.block_until_ready(st.lower)
    dt = time.perf_counter() - t0
    out.update(seconds=round(dt, 2), tokens_per_s=round(batch * length / dt), chunks=st.memory.count,
               chunk_memory_bytes=st.memory.nbytes())
  out["compiles"] = dict(eng.traces)
  out["peak_rss_bytes"] = peak_rss()
  params_bytes = out["params"] * 4
  out["peak_over_memory"] = round(out["peak_rss_bytes"] / max(1, out["chunk_memory_bytes"] + params_bytes + base), 3)
  return out


def main(argv):
  del argv
  from gca_jax.evals.runtime import parse_lengths
  if _ONE.value:
    mode, length = _ONE.value.split(":")
    print("RESULT " + json.dumps(run_one(mode, int(length))), flush=True)
    return
  import jax
  import numpy as np
  rows = []
  full_max = parse_lengths(_FULL_MAX.value)[0]
  jobs = [("tail", n) for n in parse_lengths(_LENGTHS.value)]
  jobs += [("full", n) for n in parse_lengths(_LENGTHS.value) if n <= full_max]
  for mode, n in jobs:
    cmd = [sys.executable, os.path.abspath(__file__), f"--one={mode}:{n}",
           f"--segment_chunks={_SEG.value}", f"--batch={_BATCH.value}"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode or not line:
      row = {"mode": mode, "length": n, "error": (res.stderr or "")[-2000:]}
    else:
      row = json.loads(line[0][7:])
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(row), flush=True)
    rows.append(row)
  meta = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
          "python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
          "backend": jax.default_backend(), "platform": platform.platform(),
          "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")}
  import flax
  meta["flax"] = flax.__version__
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump({"meta": meta, "model": "ModelConfig() defaults: d 64, 2 heads, chunk 15, window 32, top_k 3",
               "rows": rows}, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
