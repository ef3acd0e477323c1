"""A small reader for R's XDR serialization and lazy-load databases (``.rdx``/``.rdb``).

R packages ship data sets as a lazy-load database: ``Rdata.rdx`` is a (gzip or zlib)
compressed serialized index ``list(variables=, references=, compressed=)`` and each
variable in ``Rdata.rdb`` is a 4-byte big-endian length followed by a compressed
serialization. This module reads the parts that data sets use (atomic vectors, lists,
attributes, pairlists, symbols, a few ALTREP classes) with the standard library only.
R values map to Python as: character vector -> ``RVector`` of ``str | None``, other atomic
vectors -> ``RVector`` of numbers, list -> ``RVector`` of values; attributes live in
``.attrs``. Unsupported constructs raise ``RFormatError``.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import lzma
import struct
import zlib
from typing import Any

from etils import epath

NA_INTEGER = -(2**31)

# SEXP type codes (R Internals, "Serialization formats").
_SYM, _LIST, _CLO, _ENV, _PROM, _LANG = 1, 2, 3, 4, 5, 6
_CHAR, _LGL, _INT, _REAL, _CPLX, _STR, _DOT = 9, 10, 13, 14, 15, 16, 17
_VEC, _EXPR, _RAW, _S4 = 19, 20, 24, 25
_REF, _NIL, _GLOBALENV, _UNBOUND, _MISSING, _BASENS = 255, 254, 253, 252, 251, 250
_PERSIST, _EMPTYENV, _BASEENV, _ATTRLANG, _ATTRLIST, _ALTREP = 247, 242, 241, 240, 239, 238


class RFormatError(ValueError):
  """The bytes are not an R serialization this reader understands."""


@dataclasses.dataclass
class RVector:
  """An R vector (atomic or list) with its R type code and attributes."""

  rtype: int
  values: list[Any]
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.values)

  @property
  def names(self) -> list[str] | None:
    n = self.attrs.get("names")
    return None if n is None else list(n.values)

  def as_dict(self) -> dict[str, Any]:
    """Named vector/list (or data frame) as ``{name: value}``."""
    if self.names is None:
      raise RFormatError("the R object has no names attribute")
    return dict(zip(self.names, self.values))


@dataclasses.dataclass
class RSymbol:
  name: str


@dataclasses.dataclass
class RPairList:
  """A pairlist/language object flattened to ``[(tag or None, value)]``."""

  rtype: int
  items: list[tuple[str | None, Any]]
  attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class REnv:
  """A placeholder for an environment (data sets do not need their contents)."""

  kind: str


class _Reader:
  """Reads one XDR (format ``X``) serialization stream."""

  def __init__(self, data: bytes):
    self.buf = memoryview(data)
    self.pos = 0
    self.refs: list[Any] = []

  def _take(self, n: int) -> memoryview:
    if self.pos + n > len(self.buf):
      raise RFormatError(f"truncated R serialization: need {n} bytes at offset {self.pos}")
    out = self.buf[self.pos:self.pos + n]
    self.pos += n
    return out

  def int(self) -> int:
    return struct.unpack(">i", self._take(4))[0]

  def length(self) -> int:
    n = self.int()
    if n == -1:  # long vector: two ints
      hi, lo = self.int(), self.int()
      n = (hi << 32) + lo
    if n < 0:
      raise RFormatError(f"negative vector length {n}")
    return n

  def header(self) -> None:
    magic = bytes(self._take(2))
    if magic != b"X\n":
      raise RFormatError(f"unsupported R serialization format {magic!r}: only XDR binary ('X\\n') is read")
    version = self.int()
    self.int()  # writer R version
    self.int()  # minimal reader R version
    if version == 3:
      self._take(self.int())  # native encoding name
    elif version != 2:
      raise RFormatError(f"unsupported R serialization version {version} (2 and 3 are read)")

  def item(self) -> Any:
    flags = self.int()
    t = flags & 0xFF
    has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
    if t == _NIL:
      return None
    if t in (_EMPTYENV, _BASEENV, _GLOBALENV, _BASENS):
      return REnv({_EMPTYENV: "empty", _BASEENV: "base", _GLOBALENV: "global", _BASENS: "base_ns"}[t])
    if t in (_UNBOUND, _MISSING):
      return None
    if t == _REF:
      idx = flags >> 8
      if idx == 0:
        idx = self.int()
      if not 0 < idx <= len(self.refs):
        raise RFormatError(f"bad reference index {idx} ({len(self.refs)} objects seen)")
      return self.refs[idx - 1]
    if t == _PERSIST:
      names = self._strings_body(has_attr=False)
      obj = REnv(f"persistent:{names.values}")
      self.refs.append(obj)
      return obj
    if t == _SYM:
      sym = RSymbol(self.item())
      self.refs.append(sym)
      return sym
    if t == _ENV:
      env = REnv("env")
      self.refs.append(env)
      self.int()  # locked
      for _ in range(4):  # enclosure, frame, hash table, attributes
        self.item()
      return env
    if t in (_LIST, _LANG, _CLO, _PROM, _DOT, _ATTRLANG, _ATTRLIST):
      return self._pairlist(t, has_attr, has_tag)
    if t == _CHAR:
      n = self.int()
      if n == -1:
        return None
      return bytes(self._take(n)).decode("utf-8", errors="replace")
    if t == _ALTREP:
      return self._altrep()
    if t in (_LGL, _INT):
      n = self.length()
      vals = list(struct.unpack(f">{n}i", self._take(4 * n)))
      vals = [None if v == NA_INTEGER else v for v in vals]
      return self._attrs(RVector(t, vals), has_attr)
    if t == _REAL:
      n = self.length()
      return self._attrs(RVector(t, list(struct.unpack(f">{n}d", self._take(8 * n)))), has_attr)
    if t == _CPLX:
      n = self.length()
      d = struct.unpack(f">{2 * n}d", self._take(16 * n))
      return self._attrs(RVector(t, [complex(d[2 * i], d[2 * i + 1]) for i in range(n)]), has_attr)
    if t == _STR:
      return self._strings_body(has_attr)
    if t in (_VEC, _EXPR):
      n = self.length()
      return self._attrs(RVector(t, [self.item() for _ in range(n)]), has_attr)
    if t == _RAW:
      n = self.length()
      return self._attrs(RVector(t, [bytes(self._take(n))]), has_attr)
    if t == _S4:
      return self._attrs(RVector(t, []), has_attr)
    raise RFormatError(f"unsupported R object type {t} at offset {self.pos - 4}")

  def _strings_body(self, has_attr: bool) -> RVector:
    n = self.length()
    return self._attrs(RVector(_STR, [self.item() for _ in range(n)]), has_attr)

  def _attrs(self, obj: RVector, has_attr: bool) -> RVector:
    if has_attr:
      obj.attrs = _pairlist_dict(self.item())
    return obj

  def _pairlist(self, t: int, has_attr: bool, has_tag: bool) -> RPairList:
    out = RPairList(t, [])
    while True:  # iterate along the CDR chain instead of recursing
      attrs = _pairlist_dict(self.item()) if has_attr else {}
      if not out.attrs:
        out.attrs = attrs
      tag = self.item() if has_tag else None
      out.items.append((tag.name if isinstance(tag, RSymbol) else None, self.item()))
      flags = self.int()
      nt = flags & 0xFF
      if nt not in (_LIST, _LANG, _ATTRLIST, _ATTRLANG, _DOT):
        self.pos -= 4
        rest = self.item()
        if rest is not None:
          out.items.append((None, rest))
        return out
      has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))

  def _altrep(self) -> Any:
    info, state, attr = self.item(), self.item(), self.item()
    cls = info.items[0][1].name if isinstance(info, RPairList) else "?"
    attrs = _pairlist_dict(attr)
    if cls in ("compact_intseq", "compact_realseq"):
      n, start, step = state.values[:3]
      vals = [start + i * step for i in range(int(n))]
      if cls == "compact_intseq":
        vals = [int(v) for v in vals]
      return RVector(_INT if cls == "compact_intseq" else _REAL, vals, attrs)
    if cls.startswith("wrap_"):
      inner = state.values[0]
      if attrs:
        inner.attrs = attrs
      return inner
    if cls == "deferred_string":
      arg = state.items[0][1] if isinstance(state, RPairList) else state
      return RVector(_STR, [None if v is None else _num_str(v) for v in arg.values], attrs)
    raise RFormatError(f"unsupported ALTREP class {cls!r}")


def _num_str(v: Any) -> str:
  if isinstance(v, float) and v.is_integer():
    return str(int(v))
  return str(v)


def _pairlist_dict(obj: Any) -> dict[str, Any]:
  if obj is None:
    return {}
  if not isinstance(obj, RPairList):
    raise RFormatError(f"expected an attribute pairlist, got {type(obj).__name__}")
  return {tag: val for tag, val in obj.items if tag is not None}


def unserialize(data: bytes) -> Any:
  """Reads one XDR R serialization (as written by ``serialize``/inside ``saveRDS``)."""
  r = _Reader(data)
  r.header()
  return r.item()


def read_rds(path: str | epath.PathLike) -> Any:
  """Reads an ``.rds`` file (gzip, bzip2, xz or uncompressed)."""
  return unserialize(_decompress_file(epath.Path(path).read_bytes(), str(path)))


def _decompress_file(raw: bytes, name: str) -> bytes:
  if raw[:2] == b"\x1f\x8b":
    return gzip.decompress(raw)
  if raw[:3] == b"BZh":
    return bz2.decompress(raw)
  if raw[:6] == b"\xfd7zXZ\x00":
    return lzma.decompress(raw)
  if raw[:1] == b"\x78":
    return zlib.decompress(raw)
  if raw[:2] == b"X\n":
    return raw
  raise RFormatError(f"{name}: not a compressed R serialization (starts with {raw[:6]!r})")


def _decompress_blob(blob: bytes, kind: int, name: str) -> bytes:
  """Decompresses one lazy-load DB entry (R's ``R_decompress1/2/3``)."""
  if len(blob) < 4:
    raise RFormatError(f"{name}: truncated entry")
  size = struct.unpack(">I", blob[:4])[0]
  try:
    if kind == 1:
      out = zlib.decompress(blob[4:])
    else:
      tag, body = blob[4:5], blob[5:]
      out = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
             b"0": lambda b: b}[tag](body)
  except (zlib.error, OSError, lzma.LZMAError, KeyError) as e:
    raise RFormatError(f"{name}: cannot decompress entry ({e})") from e
  if len(out) != size:
    raise RFormatError(f"{name}: entry has {len(out)} bytes, header says {size}")
  return out


def read_lazyload_db(rdx: str | epath.PathLike) -> dict[str, Any]:
  """Reads every variable of a lazy-load database given its ``.rdx`` (``.rdb`` beside it)."""
  rdx = epath.Path(rdx)
  rdb = rdx.with_suffix(".rdb")
  for p in (rdx, rdb):
    if not p.exists():
      raise FileNotFoundError(f"R lazy-load database file {p} is missing")
  index = read_rds(rdx)
  if not isinstance(index, RVector) or "variables" not in (index.names or []):
    raise RFormatError(f"{rdx}: not a lazy-load index (no 'variables' entry)")
  idx = index.as_dict()
  comp = idx.get("compressed")
  kind = 1 if comp is None else int(comp.values[0] if comp.values[0] is not None else 1)
  data = rdb.read_bytes()
  out = {}
  for name, pos in idx["variables"].as_dict().items():
    off, n = (int(v) for v in pos.values[:2])
    if off < 0 or off + n > len(data):
      raise RFormatError(f"{rdb}: entry {name!r} [{off}, {off + n}) is outside the file")
    out[name] = unserialize(_decompress_blob(data[off:off + n], kind, f"{rdb}:{name}"))
  return out
