"""The model names its parts for profiles: every op of the compiled train step carries the
part it belongs to (``benchmarks/step_profile.py`` groups op time by these names)."""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from benchmarks.step_profile import PARTS, op_parts, part_of
from gca_jax.config import ModelConfig, OptimConfig
from gca_jax.model import build_model
from gca_jax.train.optim import make_optimizer
from gca_jax.train.state import init_state
from gca_jax.train.step import make_train_step

TINY = ModelConfig(vocab_size=64, d_model=16, num_heads=2, num_kv_heads=2, mlp_dim=32, chunk_size=7,
                   top_k=2, window=16)


def _step_parts(cfg: ModelConfig) -> dict[str, int]:
  model = build_model(cfg, rngs=nnx.Rngs(0))
  tx = make_optimizer(OptimConfig(), 10)
  graphdef, state = init_state(model, tx, 0)
  batch = {"tokens": jax.random.randint(jax.random.PRNGKey(0), (2, 64), 1, cfg.vocab_size - 1)}
  hlo = jax.jit(make_train_step(graphdef, tx)).lower(state, batch).compile().as_text()
  counts = {}
  for part in op_parts(hlo).values():
    counts[part] = counts.get(part, 0) + 1
  return counts


def test_part_of_reads_the_scope_path():
  assert part_of("jit(train_step)/transpose(jvp(encoder))/attn/dot_general") == "encoder"
  assert part_of("jit(train_step)/transpose(jvp(gca))/jvp(gca)/bchgkqs,bckshd->bchgkqd/dot_general") == "gca"
  assert part_of("jit(train_step)/jvp(attn)/bjmhgd,bjnhd->bjhgmn/dot_general") == "attn"
  assert part_of("jit(train_step)/jvp(retrieval)/while") == "retrieval"
  assert part_of("jit(train_step)/adam/mul") == "other"
  assert part_of("jit(train_step)/attention_mask/mul") == "other"  # whole words only


def test_drt_step_names_every_part_and_the_baseline_only_its_own():
  drt = _step_parts(TINY)
  for part in set(PARTS) - {"head"}:  # the train step's loss takes the head's input, not logits
    assert drt.get(part, 0) > 0, (part, drt)
  base = _step_parts(dataclasses.replace(TINY, model_type="sliding_window"))
  for part in ("embed", "attn", "mlp", "loss"):
    assert base.get(part, 0) > 0, (part, base)
  for part in ("retrieval", "gca", "encoder"):
    assert base.get(part, 0) == 0, (part, base)
