"""A fake `gcloud` for tests and rehearsals: logs each argv as a JSON line and simulates TPUs.

State lives in $FAKE_GCLOUD_DIR/state.json:
  resources        {name: state}; `create` adds one in `create_state` (default ACTIVE)
  describe_queue   states returned (and adopted) by the next `describe` calls, first first
  ssh_failures     [{"match": text, "msg": text, "rc": int, "state": optional new state}]: the
                   next ssh whose --command contains `match` fails with `msg` instead of running
`tpu-vm ssh` runs the --command with `bash -c` once per worker (GCA_WORKER_ID=N) in a per-TPU
"remote home" ($FAKE_GCLOUD_DIR/remote/<name>, wiped by delete), with a stub `python3` first on
PATH that appends {prog, argv, env, cwd} to remote_calls.jsonl; `-m venv DIR` makes stub
DIR/bin/python and DIR/bin/pip. The stub program sleeps $FAKE_PROGRAM_SLEEP seconds and exits
with $FAKE_PROGRAM_EXIT.
"""
from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

_STUB = '''#!{python} -IS
import json, os, pathlib, shutil, sys, time
rec = {{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd(),
       "env": dict(os.environ)}}
fd = os.open(os.environ["FAKE_REMOTE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, (json.dumps(rec) + "\\n").encode())
os.close(fd)
if sys.argv[1:3] == ["-m", "venv"]:
  bin_dir = pathlib.Path(sys.argv[3]) / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name in ("python", "pip"):
    shutil.copy(__file__, bin_dir / name)
elif sys.argv[1:3] == ["-m", "experiments.main"]:
  print("fake program running", flush=True)
  time.sleep(float(os.environ.get("FAKE_PROGRAM_SLEEP", "0")))
  sys.exit(int(os.environ.get("FAKE_PROGRAM_EXIT", "0")))
'''


class FakeGcloud:
  """Test-side handle: installs the fake under `root` and reads back what happened."""

  def __init__(self, root: pathlib.Path, workers: int = 2):
    self.root = pathlib.Path(root)
    self.bin = self.root / "bin"
    self.bin.mkdir(parents=True, exist_ok=True)
    gcloud = self.bin / "gcloud"
    gcloud.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I -S "
                      f"{shlex.quote(str(pathlib.Path(__file__).resolve()))} \"$@\"\n")
    gcloud.chmod(0o755)
    remote_bin = self.root / "remote_bin"
    remote_bin.mkdir(exist_ok=True)
    stub = remote_bin / "python3"
    stub.write_text(_STUB.format(python=sys.executable))
    stub.chmod(0o755)
    self.workers = workers
    if not (self.root / "state.json").exists():
      self.save({"resources": {}, "describe_queue": [], "ssh_failures": []})

  def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(FAKE_GCLOUD_DIR=str(self.root), FAKE_GCLOUD_WORKERS=str(self.workers),
               PATH=f"{self.bin}{os.pathsep}{env.get('PATH', '')}")
    return env

  def load(self) -> dict:
    return json.loads((self.root / "state.json").read_text())

  def save(self, state: dict) -> None:
    (self.root / "state.json").write_text(json.dumps(state))

  def update(self, **kw) -> None:
    self.save(dict(self.load(), **kw))

  def calls(self) -> list[list[str]]:
    path = self.root / "calls.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

  def remote_calls(self) -> list[dict]:
    path = self.root / "remote_calls.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

  def remote_home(self, name: str) -> pathlib.Path:
    return self.root / "remote" / name

  def cli(self, *args: str, cwd: pathlib.Path, env: dict[str, str] | None = None,
          module: str = "launch.tpu", timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `python -m launch.tpu ARGS` (argv list, no shell) against this fake."""
    full_env = self.env()
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parent.parent), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def make_repo(path: pathlib.Path) -> pathlib.Path:
  """A one-commit git repository with a pyproject.toml, standing in for the project."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "pyproject.toml").write_text('[project]\nname = "stand-in"\nversion = "0"\n')
  git = ["git", "-C", str(path), "-c", "user.email=t@example.com", "-c", "user.name=t"]
  for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
    subprocess.run(git + args, check=True, capture_output=True)
  return path


def _flag(argv: list[str], name: str) -> str | None:
  for a in argv:
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return None


def _fail(msg: str, rc: int = 1) -> int:
  print(f"ERROR: (gcloud) {msg}", file=sys.stderr)
  return rc


def main(argv: list[str]) -> int:
  root = pathlib.Path(os.environ["FAKE_GCLOUD_DIR"])
  with (root / "calls.jsonl").open("a") as f:
    f.write(json.dumps(argv) + "\n")
  fake = FakeGcloud(root, int(os.environ.get("FAKE_GCLOUD_WORKERS", "2")))
  state = fake.load()
  args = argv[1:] if argv and argv[0] in ("alpha", "beta") else argv
  words = [a for a in args if not a.startswith("--")]
  if words[:2] != ["compute", "tpus"] or len(words) < 5:
    return _fail(f"fake gcloud does not know {argv}", 2)
  group, verb, name = words[2], words[3], words[4] if len(words) > 4 else ""
  res = state["resources"]
  if group == "queued-resources" and verb == "list":
    print("\n".join(f"{n} {s}" for n, s in res.items()))
    return 0
  if group == "queued-resources" and verb == "create":
    if name in res:
      return _fail(f"ALREADY_EXISTS: queued resource {name} exists")
    res[name] = state.get("create_state", "ACTIVE")
  elif group == "queued-resources" and verb == "describe":
    if state["describe_queue"] and name in res:
      res[name] = state["describe_queue"].pop(0)
    if name not in res:
      return _fail(f"NOT_FOUND: queued resource {name} was not found")
    print(res[name] if _flag(args, "format") else f"name: {name}\nstate:\n  state: {res[name]}")
  elif group == "queued-resources" and verb == "delete":
    if name not in res:
      return _fail(f"NOT_FOUND: queued resource {name} was not found")
    del res[name]
    shutil.rmtree(fake.remote_home(name), ignore_errors=True)
  elif group == "tpu-vm" and verb in ("ssh", "scp"):
    node = name.split(":", 1)[0] if verb == "ssh" else words[5].split(":", 1)[0]
    if res.get(node) != "ACTIVE":
      return _fail(f"NOT_FOUND: TPU node {node} is {res.get(node, 'missing')}", 1)
    if verb == "scp":
      src, dst = words[4], words[5].split(":", 1)[1]
      home = fake.remote_home(node)
      home.mkdir(parents=True, exist_ok=True)
      shutil.copy(src, home / dst)
      return 0
    command = _flag(args, "command") or ""
    for i, failure in enumerate(state["ssh_failures"]):
      if failure.get("match", "") in command:
        del state["ssh_failures"][i]
        if "state" in failure:
          res[node] = failure["state"]
        fake.save(state)
        print(failure["msg"], file=sys.stderr)
        return int(failure.get("rc", 255))
    fake.save(state)
    return _ssh(fake, node, _flag(args, "worker") or "0", command)
  else:
    return _fail(f"fake gcloud does not know {argv}", 2)
  fake.save(state)
  return 0


def _ssh(fake: FakeGcloud, node: str, worker: str, command: str) -> int:
  home = fake.remote_home(node)
  home.mkdir(parents=True, exist_ok=True)
  workers = range(fake.workers) if worker == "all" else [int(worker)]
  rc = 0
  for w in workers:
    env = dict(os.environ, HOME=str(home), GCA_WORKER_ID=str(w),
               FAKE_REMOTE_LOG=str(fake.root / "remote_calls.jsonl"),
               PATH=f"{fake.root / 'remote_bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", command], cwd=home, env=env, stdin=subprocess.DEVNULL)
    rc = max(rc, proc.returncode)
  return rc


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
