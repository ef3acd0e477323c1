"""experiments.main rejects bad input before writing anything, with a message listing what is
valid; the registry and sweeps resolve."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments import main as main_lib
from experiments.registry import expand_sweep, get_experiment, list_experiments, list_sweeps
from gca_jax.config import ConfigError, apply_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(tmp_path / "cache"))
  env.pop("GCA_JAX_DISTRIBUTED", None)
  return subprocess.run([sys.executable, "-m", "experiments.main", f"--workdir={tmp_path / 'w'}",
                         *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expect", [
    (["--experiment=nope"], "registered experiments: ["),
    (["--experiment=tiny_cpu", "--set=train.stepz=3"], "valid: ['answer_loss_weight'"),
    (["--experiment=tiny_cpu", "--set=trian.steps=3"], "valid sections:"),
    (["--experiment=tiny_cpu", "--set=train.steps=many"], "expected a value of type int"),
    (["--experiment=tiny_cpu", "--set=train.steps=0"], "TrainConfig.steps=0"),
    (["--experiment=tiny_cpu", "--set=model.vocab_size=512"], "must equal data.vocab_size"),
    (["--experiment=tiny_cpu", "--mode=bogus"], "valid modes: ['eval_passkey', 'eval_ppl', 'generate', 'train']"),
    (["--sweep=nope"], "registered sweeps: ["),
    (["--sweep=gumbel", "--set=model.top_k=zero"], "expected a value of type int"),
    (["--experiment=tiny_cpu", "--set=data.passkey_alphabet=emoji"], "passkey_alphabet"),
    (["--experiment=tiny_cpu", "--set=execution.remat_policy=all"], "remat_policy"),
])
def test_bad_input_fails_before_writing(tmp_path, args, expect):
  proc = _run(tmp_path, *args)
  assert proc.returncode != 0
  assert expect in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()


def test_resolve_without_subprocess():
  with pytest.raises(ConfigError, match="tiny_cpu"):
    main_lib.resolve("tiny", [], "train")
  exp = main_lib.resolve("tiny_cpu", ["train.steps=7", "train.log_every=2", "checkpoint.every=3"],
                         "train")
  assert (exp.train.steps, exp.train.log_every, exp.checkpoint.every) == (7, 2, 3)
  assert set(main_lib.MODES) >= {"train"}


def test_registry():
  names = list_experiments()
  for n in ("tiny_cpu", "tiny_cpu_sliding_window", "tiny_cpu_full_attention", "tiny_synthetic",
            "paper_drt_128m", "paper_drt_x2", "paper_base_12l", "paper_niah_16k"):
    assert n in names
    exp = get_experiment(n)
    assert exp.name == n and exp.model.vocab_size == exp.data.vocab_size
  p = get_experiment("paper_drt_128m")
  assert (p.data.seq_len, p.data.batch_size, p.optim.lr, p.optim.min_lr, p.optim.warmup_steps,
          p.train.steps, p.model.vocab_size) == (16380, 32, 2e-3, 4e-4, 1200, 60000, 50265)
  assert get_experiment("paper_niah_16k").model.chunk_size == 64
  assert get_experiment("paper_drt_x2").model.upper_layers == (3, 3)


def test_sweeps_expand_to_valid_uniquely_named_runs():
  assert set(list_sweeps()) >= {"chunk_topk", "gumbel", "bypass_residual", "retrieval_groups"}
  seen = set()
  for sweep in list_sweeps():
    runs = expand_sweep(sweep)
    assert len(runs) >= 2
    for run in runs:
      exp = apply_overrides(get_experiment(run.experiment), run.overrides)
      assert exp.name == run.run_name and run.run_name not in seen
      seen.add(run.run_name)
  assert expand_sweep("chunk_topk") == expand_sweep("chunk_topk")  # deterministic
  runs = {r.run_name: apply_overrides(get_experiment(r.experiment), r.overrides)
          for r in expand_sweep("chunk_topk")}
  assert runs["tiny_cpu-chunk31-topk4"].model.chunk_size == 31
  assert runs["tiny_cpu-chunk31-topk4"].model.top_k == 4
  groups = {r.run_name: apply_overrides(get_experiment(r.experiment), r.overrides)
            for r in expand_sweep("retrieval_groups")}
  assert groups["tiny_cpu-groups2"].model.upper_layers == (1, 1)
  with pytest.raises(ConfigError, match="registered sweeps"):
    expand_sweep("nope")
