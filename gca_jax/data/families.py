"""Text families beside ``books``: software manuals from Debian documentation packages.

Each family is the documentation of one Debian package, downloaded (never installed) by
``gca_jax.data.sources.download`` and read from the package's data archive:

* ``perl``: the Perl manual pages in POD (``perl-doc``; GPL-1+ or Artistic, Perl's licence);
  formatting codes such as ``C<...>`` are reduced to their text, commands to headings.
* ``postgres``: the PostgreSQL manual in HTML (``postgresql-doc-15``; PostgreSQL Licence),
  reduced to its text without the navigation bars.
* ``python``: the Python manual's reStructuredText sources (``python3.11-doc``; PSF Licence
  v2), as shipped.

The demo trains on ``books`` + ``perl`` + ``postgres`` (corpus ``books_manuals``) and holds
``python`` out entirely (corpus ``python_docs``): its text is never trained on and never seen by
the tokenizer, so it is the unseen-haystack family of every evaluation. Each family keeps a
deterministic sample of its files (ordered by a hash of the path) up to ``max_bytes`` of
source text, so one manual does not outweigh the others and the demo stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html.parser
import re
import tarfile
from collections.abc import Callable, Iterator

Document = dict[str, str]
MAX_BYTES = 4_000_000  # source bytes kept per family


@dataclasses.dataclass(frozen=True)
class Family:
  """One documentation package and how its files become documents."""

  name: str
  package: str  # Debian package name
  licence: str
  description: str
  folder: str  # files kept: under a folder of this name ...
  suffix: str  # ... with this ending
  to_text: Callable[[str], str]
  skip: tuple[str, ...] = ()  # file names left out (indexes, tables of contents)
  max_bytes: int = MAX_BYTES


_POD_CODE = re.compile(r"[A-Z]<(?:<+\s(.*?)\s>+|([^<>]*))>", re.S)


def pod_to_text(pod: str) -> str:
  """POD with formatting codes reduced to their text (``L<text|link>`` keeps ``text``), command
  paragraphs to their argument (``=head2 Name`` -> ``Name``), ``=cut``/``=over`` etc. dropped."""
  def code(m: re.Match) -> str:
    inner = m.group(1) if m.group(1) is not None else m.group(2)
    return inner.split("|", 1)[0]
  text = pod
  for _ in range(8):  # nested codes, innermost first
    new = _POD_CODE.sub(code, text)
    if new == text:
      break
    text = new
  out = []
  for line in text.split("\n"):
    if line.startswith("="):
      cmd, _, arg = line[1:].partition(" ")
      if cmd in ("cut", "pod", "over", "back", "begin", "end", "for", "encoding"):
        continue
      line = arg.strip()
    out.append(line)
  return "\n".join(out)


class _HtmlText(html.parser.HTMLParser):
  """Text of an HTML page: block elements end lines; head, scripts and navigation are skipped."""

  BLOCKS = {"p", "div", "br", "tr", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "pre",
            "table", "ul", "ol", "dl", "blockquote", "title"}
  HIDDEN = {"head", "script", "style"}

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts: list[str] = []
    self.stack: list[tuple[str, bool]] = []  # (tag, hidden)
    self.pre = 0

  def _hidden(self) -> bool:
    return any(h for _, h in self.stack)

  def handle_starttag(self, tag, attrs):
    cls = dict(attrs).get("class") or ""
    hidden = tag in self.HIDDEN or "navheader" in cls or "navfooter" in cls
    if tag not in ("br", "hr", "img", "meta", "link", "input"):
      self.stack.append((tag, hidden))
    self.pre += tag == "pre"
    if tag in self.BLOCKS:
      self.parts.append("\n")

  def handle_endtag(self, tag):
    for i in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed inner tags
      if self.stack[i][0] == tag:
        del self.stack[i:]
        break
    self.pre -= tag == "pre" and self.pre > 0
    if tag in self.BLOCKS:
      self.parts.append("\n")

  def handle_data(self, data):
    if self._hidden():
      return
    self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(page: str) -> str:
  """The visible text of an HTML page, one block per line, runs of blank lines collapsed,
  no blank lines around it."""
  p = _HtmlText()
  p.feed(page)
  p.close()
  lines = [line.strip(" ") if not line.startswith(" ") else line.rstrip() for line in
           "".join(p.parts).split("\n")]
  return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


FAMILIES = {
    "perl": Family("perl", "perl-doc", "GPL-1+ or Artistic (Perl's licence)",
                   "the Perl manual (POD)", "pod", ".pod", pod_to_text,
                   skip=("perltoc.pod", "perluniprops.pod", "perlapi.pod")),
    "postgres": Family("postgres", "postgresql-doc-15", "PostgreSQL Licence",
                       "the PostgreSQL 15 manual (HTML reduced to text)", "html", ".html",
                       html_to_text, skip=("bookindex.html",), max_bytes=9_000_000),
    "python": Family("python", "python3.11-doc", "PSF Licence v2",
                     "the Python 3.11 manual (reStructuredText sources)",
                     "_sources", ".rst.txt", lambda t: t,
                     skip=("contents.rst.txt", "genindex.rst.txt")),
}
CORPORA = {
    "books_manuals": ("shakespeare", "milton", "kjv", "austen", "perl", "postgres"),
    "python_docs": ("python",),  # held out: never trained on
}


def select(names: list[str], sizes: list[int], max_bytes: int) -> list[int]:
  """Indexes of the files kept: ordered by ``sha256(path)``, taken while the running total of
  their sizes stays within ``max_bytes`` (the first file is always kept)."""
  order = sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode()).digest())
  kept, total = [], 0
  for i in order:
    if kept and total + sizes[i] > max_bytes:
      continue
    kept.append(i)
    total += sizes[i]
  return kept


def documents(family: Family, tar: tarfile.TarFile) -> Iterator[Document]:
  """The family's documents from a package's data archive (raw text; the caller normalises),
  in path order; ids are ``<family>/<path below the folder>``."""
  mark = f"/{family.folder}/"
  members = sorted((m for m in tar.getmembers() if m.isfile() and mark in m.name
                    and m.name.endswith(family.suffix)
                    and m.name.rsplit("/", 1)[-1] not in family.skip), key=lambda m: m.name)
  if not members:
    raise ValueError(f"{family.package}: no {family.suffix} files under a {family.folder}/ "
                     "folder; not the expected documentation package")
  for i in sorted(select([m.name for m in members], [m.size for m in members], family.max_bytes)):
    m = members[i]
    text = family.to_text(tar.extractfile(m).read().decode("utf-8", errors="replace"))
    if text.strip():
      yield {"id": f"{family.name}/{m.name.split(mark, 1)[1]}", "source": family.name, "text": text}
