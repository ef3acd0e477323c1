"""Runs local commands as argv lists (never a shell), or only prints them under --dry_run."""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys


@dataclasses.dataclass(frozen=True)
class Result:
  returncode: int
  stdout: str = ""
  stderr: str = ""

  @property
  def output(self) -> str:
    return self.stdout + self.stderr


class Runner:
  """Executes argv lists; in dry-run mode prints each one shell-quoted and returns `dry_stdout`."""

  def __init__(self, dry_run: bool = False, out=None):
    self.dry_run = dry_run
    self.out = out or sys.stdout

  def run(self, argv: list[str], *, capture: bool = True, echo: bool = True,
          dry_stdout: str = "") -> Result:
    line = shlex.join(argv)
    if self.dry_run:
      print(line, file=self.out, flush=True)
      return Result(0, dry_stdout)
    if echo:
      print(f"+ {line}", file=sys.stderr, flush=True)
    try:
      proc = subprocess.run(argv, capture_output=capture, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
      return Result(127, "", f"{argv[0]}: command not found\n")
    return Result(proc.returncode, proc.stdout or "", proc.stderr or "")
