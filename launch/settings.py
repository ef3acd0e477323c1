"""Launcher settings: `defaults.toml` overridden by flags, validated in one place."""
from __future__ import annotations

import dataclasses
import pathlib
import re
import tomllib
from typing import Any

from launch.errors import LaunchError

DEFAULTS_PATH = pathlib.Path(__file__).with_name("defaults.toml")
PROVISIONING = ("spot", "best_effort", "on_demand")
_NAME_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Where and what to launch; `name` names both the queued resource and its TPU node."""
  project: str = ""
  zone: str = ""
  tpu_type: str = ""
  runtime_version: str = ""
  name_prefix: str = "gca-jax"
  bucket: str = ""
  provisioning: str = "spot"
  remote_dir: str = "gca_jax"
  max_retries: int = 3
  name: str = ""

  @property
  def tpu_name(self) -> str:
    return self.name or f"{self.name_prefix}-{self.tpu_type}".replace("_", "-").lower()


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_FILE_KEYS = set(_FIELDS) - {"name"}


def load_toml(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads a defaults file; unknown keys and wrong types are errors naming the key."""
  path = pathlib.Path(path)
  try:
    with path.open("rb") as f:
      data = tomllib.load(f)
  except FileNotFoundError:
    raise LaunchError(f"defaults file {path} does not exist (pass --defaults=PATH)") from None
  except tomllib.TOMLDecodeError as e:
    raise LaunchError(f"defaults file {path} is not valid TOML: {e}") from None
  for key, value in data.items():
    if key not in _FILE_KEYS:
      raise LaunchError(f"defaults file {path}: unknown key {key!r}; known keys: {sorted(_FILE_KEYS)}")
    want = int if key == "max_retries" else str
    if type(value) is not want:
      raise LaunchError(f"defaults file {path}: {key} = {value!r} should be a {want.__name__}")
  return data


def resolve(defaults_path: str | pathlib.Path, overrides: dict[str, Any]) -> Settings:
  """File values, then non-None overrides; then validation with messages naming the field."""
  values = load_toml(defaults_path)
  values.update({k: v for k, v in overrides.items() if v is not None})
  s = Settings(**values)
  for key in ("zone", "tpu_type", "runtime_version"):
    if not getattr(s, key):
      raise LaunchError(f"{key} is empty; set it in {defaults_path} or pass --{key}")
  if s.provisioning not in PROVISIONING:
    raise LaunchError(f"provisioning={s.provisioning!r}; use one of {PROVISIONING}")
  if s.max_retries < 0:
    raise LaunchError(f"max_retries={s.max_retries} must be >= 0")
  if not _NAME_RE.match(s.tpu_name):
    raise LaunchError(
        f"TPU name {s.tpu_name!r} is not valid: use lowercase letters, digits and '-', "
        "starting with a letter (pass --name)")
  return s
