"""A small end-to-end job: train a tiny DRT on a generated passkey task and watch it learn to
retrieve. Prints the loss going down, answer accuracy and where the retriever looks.

python -m experiments.demo --workdir=runs/demo [--steps=300]
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from gca_jax.config import ModelConfig, OptimConfig  # noqa: E402
from gca_jax.data.synthetic import passkey_batch  # noqa: E402
from gca_jax.model import build_model, count_params  # noqa: E402
from gca_jax.train.optim import lr_schedule, make_optimizer  # noqa: E402
from gca_jax.train.step import init_state, make_train_step  # noqa: E402

FLAGS = flags.DEFINE_string("workdir", "runs/demo", "where the summary JSON goes")
STEPS = flags.DEFINE_integer("steps", 300, "training steps")
BATCH = flags.DEFINE_integer("batch", 16, "batch size")
LENGTH = flags.DEFINE_integer("length", 240, "raw tokens per training sequence")
ANSWER_WEIGHT = flags.DEFINE_float("answer_weight", 100.0, "extra loss weight of each answer digit")


def evaluate(graphdef, params, cfg: ModelConfig, length: int, n: int = 64) -> dict:
  """Teacher-forced answer accuracy and the chunk weight the answer chunk puts on the needle."""
  data = passkey_batch(seed=1, start_index=0, batch=n, length=length, chunk=cfg.chunk_size,
                       vocab_size=cfg.vocab_size)
  fwd = jax.jit(lambda p, x: nnx.merge(graphdef, p).forward(x))
  out = fwd(params, jnp.asarray(data["tokens"]))
  pred = np.asarray(jnp.argmax(out["logits"], -1))
  tokens, mask = data["tokens"], data["answer_mask"]
  hit = pred[:, :-1] == tokens[:, 1:]
  digit_acc = float(hit[mask[:, 1:]].mean())
  hit = hit | ~mask[:, 1:]
  idx, w = (np.asarray(a) for a in out["retrieval"][0])
  last = idx.shape[1] - 2  # the landmark whose picks serve the answer chunk
  needle_chunk = data["needle_pos"] // cfg.chunk_size
  on_needle = (idx[:, last] == needle_chunk[:, None]) | (idx[:, last] == (needle_chunk[:, None] + 1))
  return {"answer_accuracy": float(hit.all(1).mean()), "digit_accuracy": digit_acc,
          "needle_weight": float((w[:, last] * on_needle).sum(1).mean())}


def main(_):
  cfg = ModelConfig(vocab_size=64, chunk_size=15, window=32, top_k=3)
  optim = OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=50)
  steps, batch, length = STEPS.value, BATCH.value, LENGTH.value
  model = build_model(cfg, rngs=nnx.Rngs(0))
  tx = make_optimizer(optim, steps)
  graphdef, state = init_state(model, tx, seed=0)
  step_fn = jax.jit(make_train_step(graphdef, tx, lr_schedule(optim, steps), answer_loss_weight=ANSWER_WEIGHT.value))
  print(f"tiny DRT: {count_params(model):,} parameters; {length} tokens x {batch}; chunk {cfg.chunk_size}, "
        f"top-{cfg.top_k}, window {cfg.window}")
  print(f"{'step':>5} {'loss':>7} {'lm_nll':>7} {'digit_acc':>9} {'answer_acc':>10} {'needle_w':>8} {'s':>6}")
  t0, history = time.time(), []
  for i in range(steps):
    b = passkey_batch(seed=0, start_index=i * batch, batch=batch, length=length, chunk=cfg.chunk_size,
                      vocab_size=cfg.vocab_size)
    state, m = step_fn(state, {"tokens": jnp.asarray(b["tokens"]), "answer_mask": jnp.asarray(b["answer_mask"])})
    if (i + 1) % 50 == 0 or i == 0:
      ev = evaluate(graphdef, state.params, cfg, length)
      row = {"step": i + 1, "loss": float(m["loss"]), "lm_nll": float(m["nll_sum"] / m["tokens"]), **ev,
             "seconds": round(time.time() - t0, 1)}
      history.append(row)
      print(f"{row['step']:>5} {row['loss']:>7.3f} {row['lm_nll']:>7.3f} {row['digit_accuracy']:>9.2f} {row['answer_accuracy']:>10.2f} "
            f"{row['needle_weight']:>8.2f} {row['seconds']:>6}")
  longer = {n * length: evaluate(graphdef, state.params, cfg, n * length, n=16) for n in (4, 16)}
  for n, ev in longer.items():
    print(f"at {n} tokens: digit accuracy {ev['digit_accuracy']:.2f}, answer accuracy {ev['answer_accuracy']:.2f}, "
          f"needle weight {ev['needle_weight']:.2f}")
  os.makedirs(FLAGS.value, exist_ok=True)
  with open(os.path.join(FLAGS.value, "summary.json"), "w") as f:
    json.dump({"history": history, "longer": longer}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
