"""Configurable needle / question templates for the passkey builder (``{key}``, ``{a}``, ``{b}``)."""

from __future__ import annotations

import contextlib
import dataclasses

from gca_jax.data import passkey as builder


@dataclasses.dataclass(frozen=True)
class Templates:
  """``needle`` and ``question`` strings; ``None`` keeps the builder's default.

  single: needle with ``{key}``, question without placeholders. multihop / multi: needle with
  ``{a}`` then ``{b}``; question with ``{a}`` (the answer follows it).
  """

  needle: str | None = None
  question: str | None = None


def _split(text: str, names: tuple[str, ...], what: str) -> tuple[str, ...]:
  parts, rest = [], text
  for n in names:
    tag = "{" + n + "}"
    if rest.count(tag) != 1:
      raise ValueError(f"{what} template {text!r} must contain {tag} exactly once, in the order "
                       f"{' '.join('{' + x + '}' for x in names)}")
    head, rest = rest.split(tag)
    parts.append(head)
  return (*parts, rest)


@contextlib.contextmanager
def applied(variant: str, t: Templates | None):
  """Temporarily installs ``t`` into the builder's template constants."""
  if t is None or (t.needle is None and t.question is None):
    yield
    return
  names = builder.FORM_NAMES[variant]
  saved = {n: getattr(builder, n) for n in names}
  try:
    if t.needle is not None:
      keys = ("key",) if variant == "single" else ("a", "b")
      setattr(builder, names[0], _split(t.needle, keys, "needle"))
    if t.question is not None:
      if variant == "single":
        if "{" in t.question:
          raise ValueError(f"single question template {t.question!r} takes no placeholders")
        setattr(builder, names[1], t.question)
      else:
        setattr(builder, names[1], _split(t.question, ("a",), "question"))
    yield
  finally:
    for n, v in saved.items():
      setattr(builder, n, v)
