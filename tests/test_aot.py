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


def test_cost_rows_and_ratios_by_hand(tmp_path):
  """The step-cost row is the roofline max(flops / peak, bytes / bandwidth) of v5e's published
  figures, and the table divides each model's estimate by the base's at the same shape."""
  from launch import aot
  rec = dict(topology="v5e:4x4", chips=16, mesh={"fsdp": 16}, global_batch=32, seq_len=16380, remat=True,
             cost={"flops": 197e12 * 2.0, "bytes accessed": 819e9 * 3.0}, memory={"total": 8 * 2 ** 30}, fits=True)
  row = aot.cost_row("paper_drt_128m", rec)
  assert row["est_seconds"] == pytest.approx(3.0) and row["est_compute_s"] == pytest.approx(2.0)
  assert row["hbm_gib_per_chip"] == pytest.approx(8.0) and row["fits"]
  base = aot.cost_row("paper_base_14l", dict(rec, cost={"flops": 197e12, "bytes accessed": 819e9 * 2.5}))
  path = str(tmp_path / "costs.json")
  aot.record_costs(path, [base], {})
  table = aot.record_costs(path, [row], {})
  assert len(table["rows"]) == 2
  (key, ratio), = table["ratios"].items()
  assert key.startswith("paper_drt_128m / paper_base_14l @ v5e:4x4 batch 32")
  assert ratio["est_seconds"] == pytest.approx(3.0 / 2.5) and ratio["flops"] == pytest.approx(2.0)
  again = aot.record_costs(path, [dict(row, flops=1.0)], {})  # same identity: replaced, not added
  assert len(again["rows"]) == 2


def test_cost_rows_keep_one_row_per_remat_policy(tmp_path):
  """A DRT row under remat is kept per remat policy (rows written before the policy existed
  count as "nothing"); each is divided by the same base row (a base has no GCA kernel)."""
  from launch import aot
  rec = dict(topology="v5e:4x4", chips=16, mesh={"fsdp": 16}, global_batch=32, seq_len=16380, remat=True,
             gca_impl="pallas", cost={"flops": 1.0, "bytes accessed": 819e9 * 3.0}, memory={"total": 1}, fits=True)
  old = aot.cost_row("paper_drt_128m", rec)
  old.pop("remat_policy")  # an older table's row
  new = aot.cost_row("paper_drt_128m", dict(rec, execution={"remat_policy": "save_gca"},
                                            cost={"flops": 1.0, "bytes accessed": 819e9 * 2.7}))
  base = aot.cost_row("paper_base_14l", dict(rec, gca_impl="xla", execution={"remat_policy": "save_gca"},
                                             cost={"flops": 1.0, "bytes accessed": 819e9 * 2.5}))
  path = str(tmp_path / "costs.json")
  aot.record_costs(path, [base, old], {})
  table = aot.record_costs(path, [new], {})
  assert sorted(r["remat_policy"] for r in table["rows"]) == ["", "nothing", "save_gca"]
  ratios = {k.split(" / ")[0]: v["est_seconds"] for k, v in table["ratios"].items()}
  assert ratios == pytest.approx({"paper_drt_128m (nothing)": 3.0 / 2.5, "paper_drt_128m (save_gca)": 2.7 / 2.5})
