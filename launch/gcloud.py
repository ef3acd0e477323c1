"""argv builders for the `gcloud compute tpus` commands the launcher uses; pure functions."""
from __future__ import annotations

from launch.settings import Settings

# Queued-resource states (`describe --format=value(state.state)`), grouped by what we do next.
READY = "ACTIVE"
PENDING = frozenset({"ACCEPTED", "CREATING", "PROVISIONING", "WAITING_FOR_RESOURCES"})
LOST = frozenset({"FAILED", "SUSPENDING", "SUSPENDED", "PREEMPTED", "DELETING", "NOT_FOUND"})


def _where(s: Settings) -> list[str]:
  return [f"--zone={s.zone}"] + ([f"--project={s.project}"] if s.project else [])


def _qr(gcloud: str, s: Settings, verb: str, alpha: bool = False) -> list[str]:
  return [gcloud, *(["alpha"] if alpha else []), "compute", "tpus", "queued-resources", verb]


def create(gcloud: str, s: Settings) -> list[str]:
  """A queued resource holding one node of the same name; best-effort exists only in alpha."""
  argv = _qr(gcloud, s, "create", alpha=s.provisioning == "best_effort") + [
      s.tpu_name, f"--node-id={s.tpu_name}", f"--accelerator-type={s.tpu_type}",
      f"--runtime-version={s.runtime_version}", *_where(s)]
  if s.provisioning == "spot":
    argv.append("--spot")
  elif s.provisioning == "best_effort":
    argv.append("--best-effort")
  return argv


def describe_state(gcloud: str, s: Settings) -> list[str]:
  return _qr(gcloud, s, "describe") + [s.tpu_name, *_where(s), "--format=value(state.state)"]


def describe(gcloud: str, s: Settings) -> list[str]:
  return _qr(gcloud, s, "describe") + [s.tpu_name, *_where(s)]


def delete(gcloud: str, s: Settings) -> list[str]:
  """--force deletes the node with the queued resource; --quiet skips the prompt."""
  return _qr(gcloud, s, "delete") + [s.tpu_name, *_where(s), "--force", "--quiet"]


def list_resources(gcloud: str, s: Settings) -> list[str]:
  return _qr(gcloud, s, "list") + _where(s)


def ssh(gcloud: str, s: Settings, command: str, worker: str = "all") -> list[str]:
  """`command` is one argv element; the remote login shell parses it, so build it quoted."""
  return [gcloud, "compute", "tpus", "tpu-vm", "ssh", s.tpu_name, *_where(s),
          f"--worker={worker}", f"--command={command}"]


def scp(gcloud: str, s: Settings, local: str, remote: str) -> list[str]:
  return [gcloud, "compute", "tpus", "tpu-vm", "scp", local, f"{s.tpu_name}:{remote}",
          *_where(s), "--worker=all"]
