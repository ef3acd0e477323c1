"""AOT compile of the sharded train step for a TPU topology from this CPU (needs libtpu)."""

from __future__ import annotations

import importlib.util

import pytest

from gca_jax.config import ConfigError, MeshConfig, ModelConfig, OptimConfig

pytestmark = [
    pytest.mark.tpu_aot,
    pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                       reason="libtpu is not installed: cannot compile for TPU topologies"),
]

TINY = ModelConfig(vocab_size=64, d_model=32, num_heads=4, num_kv_heads=2, mlp_dim=64, lower_layers=0,
                   upper_layers=(1,), encoder_layers=1, chunk_size=4, top_k=2, window=10)


def _run(batch: int, seq_len: int = 24):
  from launch import aot
  return aot.Run(model=TINY, optim=OptimConfig(), seq_len=seq_len, batch=batch,
                 mesh=MeshConfig(data=1, fsdp=2, tensor=2))


@pytest.fixture(scope="module")
def record():
  from launch import aot
  return aot.compile_train_step(_run(batch=8, seq_len=48), "v5e:2x2")


def test_memory_and_cost_analysis(record):
  assert record["chips"] == 4 and record["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
  mem = record["memory"]
  assert mem["argument"] > 0 and mem["temp"] > 0 and mem["generated_code"] > 0
  assert mem["alias"] > 0  # the state is donated
  assert 0 < mem["total"] < record["hbm_bytes"] and record["fits"]
  assert record["cost"]["flops"] > 0 and record["cost"]["bytes accessed"] > 0


def test_does_not_fit_raises_clearly(record):
  from launch import aot
  too_small = dict(record, hbm_bytes=record["memory"]["total"] // 2)
  with pytest.raises(aot.DoesNotFit, match="does not fit|more than the"):
    aot.check_fits(too_small)


def test_absurd_batch_does_not_fit():
  from launch import aot
  with pytest.raises(aot.DoesNotFit, match="HBM"):
    aot.compile_train_step(_run(batch=2 ** 16, seq_len=4096), "v5e:2x2")


def test_bad_inputs_are_config_errors():
  from launch import aot
  with pytest.raises(ConfigError, match="topology"):
    aot.topology_devices("v5x:9x9")
  with pytest.raises(ConfigError, match="mesh"):
    aot.parse_mesh("data=2,pipeline=2")
  with pytest.raises(ConfigError, match="batch"):
    aot.compile_train_step(_run(batch=3), "v5e:2x2")
