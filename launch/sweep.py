"""Sweep specs: a cartesian `--grid` over `--set` keys, or a named sweep from experiments.registry."""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import itertools
import json
import re

from launch.errors import LaunchError


@dataclasses.dataclass(frozen=True)
class Spec:
  """One run of a sweep: an experiment plus its `--set` overrides (`key=value` strings)."""
  experiment: str
  sets: tuple[str, ...] = ()

  def slug(self) -> str:
    """A stable, filesystem-safe name: the same spec maps to the same workdir, so reruns resume."""
    text = "_".join([self.experiment, *self.sets])
    digest = hashlib.sha1(json.dumps([self.experiment, *self.sets]).encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9._=-]+', '-', text)[:80].strip('-')}-{digest}"


def check_set(kv: str) -> str:
  if "=" not in kv or not kv.split("=", 1)[0].strip():
    raise LaunchError(f"--set={kv!r} should look like key=value")
  return kv


def grid(experiment: str, sets: list[str], axes: list[str]) -> list[Spec]:
  """`axes` are `key=v1,v2,...`; every combination is appended to the fixed `sets`."""
  keys, values = [], []
  for axis in axes:
    key, sep, vals = axis.partition("=")
    if not sep or not key.strip() or not vals:
      raise LaunchError(f"--grid={axis!r} should look like key=v1,v2,...")
    keys.append(key)
    values.append(vals.split(","))
  return [Spec(experiment, (*sets, *(f"{k}={v}" for k, v in zip(keys, combo))))
          for combo in itertools.product(*values)]


def from_registry(name: str, sets: list[str]) -> list[Spec]:
  """Resolves `--sweep=NAME` through experiments.registry.expand_sweep, when it exists."""
  try:
    from experiments.registry import expand_sweep  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise LaunchError(
        f"--sweep={name} needs experiments.registry.expand_sweep, which cannot be imported "
        f"({e}); use --experiment with --grid=key=v1,v2 instead") from None
  try:
    items = list(expand_sweep(name))
  except Exception as e:  # the registry's own error, e.g. an unknown sweep name
    raise LaunchError(f"expand_sweep({name!r}) failed: {type(e).__name__}: {e}") from None
  if not items:
    raise LaunchError(f"sweep {name!r} expands to no runs")
  return [_spec(item, sets) for item in items]


def _spec(item, sets: list[str]) -> Spec:
  """Accepts a name, a mapping / object with experiment (or name) and overrides (or set)."""
  if isinstance(item, str):
    return Spec(item, tuple(sets))
  if isinstance(item, tuple) and len(item) == 2:
    item = {"experiment": item[0], "overrides": item[1]}
  get = item.get if isinstance(item, collections.abc.Mapping) else (
      lambda k, d=None: getattr(item, k, d))
  experiment = get("experiment") or get("name")
  overrides = get("overrides") or get("set") or get("sets") or ()
  if not isinstance(experiment, str):
    raise LaunchError(f"expand_sweep returned {item!r}; expected a name or "
                      "{'experiment': NAME, 'overrides': {key: value}}")
  if isinstance(overrides, collections.abc.Mapping):
    overrides = [f"{k}={_value(v)}" for k, v in overrides.items()]
  return Spec(experiment, (*sets, *(check_set(str(kv)) for kv in overrides)))


def _value(v) -> str:
  return json.dumps(v) if isinstance(v, (bool, list, dict)) or v is None else str(v)


def join_workdir(base: str, spec: Spec) -> str:
  """Local or gs:// base dir, one subdirectory per spec."""
  return f"{base.rstrip('/')}/{spec.slug()}"
