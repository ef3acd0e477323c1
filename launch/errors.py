"""The one error type the launch CLIs turn into a clear message and a non-zero exit."""
from __future__ import annotations


class LaunchError(Exception):
  """Bad input or a failed remote step; the message says what and what to do."""
