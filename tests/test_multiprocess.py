"""Two local JAX processes (one CPU device each, coordinator on 127.0.0.1) train the same tiny
run through ``experiments.main`` and agree on every logged loss.

Process 0 writes ``metrics.jsonl`` (and TensorBoard); process 1 writes ``metrics.process1.jsonl``.
Orbax writes one checkpoint with both processes' array shards and Grain iterator states.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

from gca_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "gca_jax_test_compile_cache")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_on_every_loss(tmp_path):
  workdir, port = tmp_path / "w", _free_port()
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(tmp_path / "data_cache"),
               XLA_FLAGS="--xla_force_host_platform_device_count=1", GCA_JAX_DISTRIBUTED="1",
               GCA_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", GCA_NUM_PROCESSES="2",
               GCA_PROCESS_ID=str(pid), JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    log = (tmp_path / f"process{pid}.log").open("w")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "experiments.main", "--experiment=tiny_synthetic",
         f"--workdir={workdir}", "--set=train.steps=12", "--set=train.eval_every=0",
         "--set=checkpoint.every=6", "--set=train.eval_batches=0",  # less to compile
         "--set=model.encoder_layers=0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=240) for p in procs]
  finally:
    for p in procs:
      p.kill()
  logs = [(tmp_path / f"process{i}.log").read_text()[-3000:] for i in range(2)]
  assert codes == [0, 0], logs
  rows0 = [r for r in read_metrics(workdir / "metrics.jsonl") if "loss" in r]
  rows1 = [r for r in read_metrics(workdir / "metrics.process1.jsonl") if "loss" in r]
  assert [r["step"] for r in rows0] == list(range(1, 13))
  assert [(r["step"], r["loss"]) for r in rows0] == [(r["step"], r["loss"]) for r in rows1]
  assert not (workdir / "metrics.process0.jsonl").exists()
  ckpt = workdir / "checkpoints" / "12"
  assert sorted(p.name for p in (ckpt / "data").glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert json.loads((workdir / "experiment.json").read_text())["name"] == "tiny_synthetic"
