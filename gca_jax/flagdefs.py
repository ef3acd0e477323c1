"""absl flags that several entry points share (``--experiment``, ``--workdir``, ``--set`` ...).

absl flags are process-global, so two entry-point modules imported into one process (tests,
tools) must not both define the same name. ``define`` defines a flag once and otherwise hands
back a view of the existing one.
"""

from __future__ import annotations

from absl import flags


class SharedFlag:
  """``.value`` / ``.present`` of a flag, however many modules asked for it."""

  def __init__(self, kind: str, name: str, default, help_: str):
    self.name = name
    if name not in flags.FLAGS:
      getattr(flags, f"DEFINE_{kind}")(name, default, help_)

  @property
  def value(self):
    return flags.FLAGS[self.name].value

  @property
  def present(self) -> bool:
    return bool(flags.FLAGS[self.name].present)


def define(kind: str, name: str, default, help_: str) -> SharedFlag:
  return SharedFlag(kind, name, default, help_)
