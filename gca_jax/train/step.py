"""Pure loss, train step and eval step.

``train_step(state, batch) -> (state, metrics)`` is a pure function of arrays; the model's
structure (``graphdef``) and the optimiser are closed over by ``make_train_step``.
Batches hold ``tokens`` [B, T] (raw ids) and optionally ``labels`` [B, T] (IGNORE where no
loss) and ``answer_mask`` [B, T] (needle answers, weighted extra by ``answer_loss_weight``).
Logit t predicts token t+1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gca_jax.model.chunking import IGNORE
from gca_jax.train.cross_entropy import blocked_cross_entropy
from gca_jax.train.state import TrainState


def token_weights(batch: dict, answer_loss_weight: float) -> jax.Array:
  """Per-target weights [B, T-1] for logits[:, :-1] against tokens[:, 1:]."""
  labels = batch.get("labels", batch["tokens"])[:, 1:]
  w = (labels != IGNORE).astype(jnp.float32)
  if answer_loss_weight and "answer_mask" in batch:
    w = w + answer_loss_weight * batch["answer_mask"][:, 1:].astype(jnp.float32)
  return w


def retrieval_stats(retrieval) -> dict:
  """Mean entropy of the chunk weights and mean distance (in chunks) of the weighted picks."""
  if not retrieval:
    return {}
  ent, dist = [], []
  for idx, w in retrieval:
    c = jnp.arange(idx.shape[1])[None, :, None]
    valid = w > 0
    rows = jnp.maximum(jnp.sum(jnp.any(valid, -1)), 1)
    ent.append(-jnp.sum(jnp.where(valid, w * jnp.log(jnp.where(valid, w, 1.0)), 0.0)) / rows)
    dist.append(jnp.sum(w * (c - idx)) / rows)
  return {"retrieval_entropy": jnp.mean(jnp.stack(ent)), "retrieval_distance": jnp.mean(jnp.stack(dist))}


def loss_fn(params, graphdef, batch: dict, rng, *, train: bool, answer_loss_weight: float = 0.0,
            denom=None):
  """Weighted next-token cross-entropy ``sum(w * nll) / denom`` and auxiliary metrics.

  ``denom`` defaults to the batch's total weight (a weighted mean); gradient accumulation
  passes the whole batch's, so the micro-batch losses add up to the full-batch objective. The
  head runs in blocks of ``execution.ce_block`` positions (``blocked_cross_entropy``)."""
  model = nnx.merge(graphdef, params)
  tokens = batch["tokens"]
  out = model.forward(tokens, train=train, rngs=rng, return_hidden=True)
  w = token_weights(batch, answer_loss_weight)
  with jax.named_scope("loss"):
    wsum, nll = blocked_cross_entropy(model.head_input(out["hidden"][:, :-1]), model.embed.table[...],
                                      jnp.maximum(tokens[:, 1:], 0), w, block=model.run.ce_block)
  loss = wsum / (jnp.maximum(jnp.sum(w), 1.0) if denom is None else denom)
  lm_w = token_weights(batch, 0.0)
  aux = {"nll_sum": jnp.sum(nll * lm_w), "tokens": jnp.sum(lm_w), **retrieval_stats(out["retrieval"])}
  return loss, aux


SUMMED = ("nll_sum", "tokens")  # metrics that add over micro-batches (the others are averaged)


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule=None, *, grad_accum: int = 1,
                    answer_loss_weight: float = 0.0):
  """The pure train step; ``grad_accum`` > 1 splits the batch into micro-batches (one update).

  Every micro-batch's weighted NLL sum is divided by the whole batch's total weight, so the
  update does not depend on ``grad_accum`` even with uneven masks or answer weights."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict):
    rng, step_rng = jax.random.split(state.rng)
    denom = jnp.maximum(jnp.sum(token_weights(batch, answer_loss_weight)), 1.0)

    def micro(mb, key):
      return grad_fn(state.params, graphdef, mb, key, train=True, answer_loss_weight=answer_loss_weight,
                     denom=denom)

    if grad_accum == 1:
      (loss, aux), grads = micro(batch, step_rng)
    else:
      split = jax.tree_util.tree_map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

      def body(carry, xs):
        mb, i = xs
        (l, a), g = micro(mb, jax.random.fold_in(step_rng, i))
        return jax.tree_util.tree_map(jnp.add, carry, (l, g)), a

      zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, state.params))
      (loss, grads), auxs = jax.lax.scan(body, zeros, (split, jnp.arange(grad_accum)))
      aux = {k: jnp.sum(v, 0) if k in SUMMED else jnp.mean(v, 0) for k, v in auxs.items()}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

  return train_step


def make_eval_step(graphdef):
  """Sum of next-token NLL and the number of scored tokens for a batch (no noise)."""

  def eval_step(params, batch: dict):
    _, aux = loss_fn(params, graphdef, batch, None, train=False)
    return {"nll_sum": aux["nll_sum"], "tokens": aux["tokens"]}

  return eval_step
