"""Two local JAX processes (one CPU device each, coordinator on 127.0.0.1) on prepared shards.

* Data: each process reads only its own train shards, the two read disjoint windows, and
  together exactly the windows of the single-process order (computed here from the files).
* Training through ``experiments.main``: both processes agree on every logged loss; a run
  killed with SIGKILL after a checkpoint and rerun logs the same losses as an uninterrupted one.

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
import time

import numpy as np

from data_corpus import manifest_of, shard_tokens, texts, write_jsonl
from gca_jax.data import prepare
from gca_jax.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CORPUS = os.path.join(REPO, "tests", "fixtures", "tiny_corpus")
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), "gca_jax_test_compile_cache")
QUIET = dict(progress=False, log=lambda *_: None, workers=1)

# Reads 3 global batches of 8 windows on this process; records the shards its readers own and
# the shards it read.
READ_WINDOWS = """
import json, sys
import numpy as np
from experiments.main import maybe_initialize_distributed
maybe_initialize_distributed()
import jax
from gca_jax.data import shard_pipeline, shards
owned, read = [], set()
init, orig = shards.ShardReader.__init__, shards.ShardReader.read
def record_init(self, root, split, parts, *a):
  init(self, root, split, parts, *a)
  owned.append([split, sorted(parts)])
def record_read(self, g, start, n):
  read.add(g)
  return orig(self, g, start, n)
shards.ShardReader.__init__, shards.ShardReader.read = record_init, record_read
it = iter(shard_pipeline.train_dataset(sys.argv[1], 32, 8, 3))
rows = np.concatenate([next(it)["tokens"] for _ in range(3)])
out = f"{sys.argv[2]}{jax.process_index()}"
np.save(out + ".npy", rows)
json.dump({"owned": owned, "read": sorted(read)}, open(out + ".json", "w"))
"""

# experiments.main, but after saving checkpoint KILL_AT (its files may still be in flight) each
# process marks the moment and waits for the test to SIGKILL it.
MAIN_WAITING_FOR_KILL = """
import os, sys, time
from absl import app
from gca_jax import checkpoint
save = checkpoint.Checkpointer.save
def save_then_wait(self, step, *a, **k):
  save(self, step, *a, **k)
  if step == int(os.environ["KILL_AT"]):
    open(os.environ["KILL_MARK"] + os.environ["GCA_PROCESS_ID"], "w").close()
    time.sleep(600)
checkpoint.Checkpointer.save = save_then_wait
from experiments import main
app.run(main.main)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path, argv: list[str], tag: str, **extra_env) -> list[subprocess.Popen]:
  port, procs = _free_port(), []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", GCA_JAX_CACHE=str(tmp_path / "data_cache"),
               XLA_FLAGS="--xla_force_host_platform_device_count=1", GCA_JAX_DISTRIBUTED="1",
               GCA_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", GCA_NUM_PROCESSES="2",
               GCA_PROCESS_ID=str(pid), JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra_env)
    log = (tmp_path / f"{tag}.process{pid}.log").open("w")
    procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def _wait(tmp_path, procs, tag: str, timeout: float = 240) -> list[int]:
  try:
    codes = [p.wait(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()
  logs = [(tmp_path / f"{tag}.process{i}.log").read_text()[-3000:] for i in range(2)]
  assert codes == [0, 0], logs
  return logs


def _window(root, m, seed: int, i: int, t: int) -> np.ndarray:
  """Training sample ``i`` by the documented rule: shard ``i % G``, uniform start."""
  g = i % m["num_shards"]
  tokens = shard_tokens(root, m, "train", g)
  start = int(np.random.default_rng([seed, i]).integers(0, len(tokens) - t + 1))
  return tokens[start:start + t].astype(np.int32)


def test_two_processes_read_disjoint_shares_of_the_single_process_order(tmp_path):
  write_jsonl(tmp_path / "c.jsonl", texts(40))
  root = tmp_path / "shards"
  prepare.prepare(str(tmp_path / "c.jsonl"), str(root), tokenizer="gpt2", num_shards=4, **QUIET)
  procs = _launch(tmp_path, ["-c", READ_WINDOWS, str(root), str(tmp_path / "out")], "read")
  _wait(tmp_path, procs, "read", timeout=120)
  m = manifest_of(root)
  ref = np.stack([_window(root, m, 3, i, 32) for i in range(24)])  # 3 global batches of 8
  got = [np.load(tmp_path / f"out{p}.npy") for p in range(2)]
  for p in range(2):
    info = json.loads((tmp_path / f"out{p}.json").read_text())
    assert info["owned"] == [["train", [p, p + 2]]]  # no reader of another process's shards
    assert set(info["read"]) <= {p, p + 2}
    np.testing.assert_array_equal(got[p], ref[p::2])  # global samples p, p + 2, ...
  assert not {r.tobytes() for r in got[0]} & {r.tobytes() for r in got[1]}  # disjoint


def _train_argv(workdir, shards_dir) -> list[str]:
  return ["--experiment=tiny_synthetic", f"--workdir={workdir}", f"--set=data.shards={shards_dir}",
          "--set=train.steps=12", "--set=train.eval_every=0", "--set=checkpoint.every=5",
          "--set=train.eval_batches=0", "--set=model.encoder_layers=0"]  # less to compile


def _losses(workdir, name="metrics.jsonl") -> list[tuple[int, float]]:
  return [(r["step"], r["loss"]) for r in read_metrics(workdir / name) if "loss" in r]


def test_two_processes_train_on_shards_and_resume_after_kill(tmp_path):
  shards_dir = tmp_path / "shards"
  prepare.prepare(TINY_CORPUS, str(shards_dir), tokenizer="sentencepiece", vocab_size=384,
                  num_shards=4, val_fraction=0.25, cache_dir=str(tmp_path / "data_cache"), **QUIET)
  ref_dir = tmp_path / "ref"
  _wait(tmp_path, _launch(tmp_path, ["-m", "experiments.main", *_train_argv(ref_dir, shards_dir)],
                          "ref"), "ref")
  ref = _losses(ref_dir)
  assert [s for s, _ in ref] == list(range(1, 13))
  assert ref == _losses(ref_dir, "metrics.process1.jsonl")
  assert not (ref_dir / "metrics.process0.jsonl").exists()
  assert sorted(p.name for p in (ref_dir / "checkpoints" / "12" / "data").glob("process_*.json")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert json.loads((ref_dir / "experiment.json").read_text())["name"] == "tiny_synthetic"

  # Killed with SIGKILL just after checkpoint 10 was handed to Orbax, then run again.
  work, mark = tmp_path / "killed", tmp_path / "mark"
  procs = _launch(tmp_path, ["-c", MAIN_WAITING_FOR_KILL, *_train_argv(work, shards_dir)], "kill",
                  KILL_AT="10", KILL_MARK=str(mark))
  deadline = time.time() + 240
  while not all(os.path.exists(f"{mark}{p}") for p in range(2)):
    assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint 10"
    time.sleep(0.05)
  for p in procs:
    p.kill()  # SIGKILL
  assert [p.wait(timeout=30) for p in procs] == [-9, -9]
  logs = _wait(tmp_path, _launch(tmp_path, ["-m", "experiments.main", *_train_argv(work, shards_dir)],
                                 "resume"), "resume")
  assert "resumed from checkpoint step" in logs[0]
  assert _losses(work) == ref and _losses(work, "metrics.process1.jsonl") == ref
