"""R serialization reader on a tiny hand-built lazy-load database (zlib + XDR bytes)."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest

from gca_jax.data import rserialize

HEADER = b"X\n" + struct.pack(">iii", 2, 0x040201, 0x020300)
NIL = struct.pack(">i", 254)


def i32(*v):
  return struct.pack(f">{len(v)}i", *v)


def charsxp(s):
  if s is None:
    return i32(9, -1)
  b = s.encode()
  return i32(9 | (8 << 12), len(b)) + b  # gp bit 3 = UTF-8, ignored by the reader


def strsxp(*vals):
  return i32(16, len(vals)) + b"".join(charsxp(v) for v in vals)


def names_attr(names, first=True):
  # pairlist node with tag: the symbol "names" (new the first time, a reference after)
  tag = i32(1) + charsxp("names") if first else i32(255 | (1 << 8))
  return i32(2 | (1 << 10)) + tag + strsxp(*names) + NIL


def named_list(items, first=True):
  body = b"".join(v for _, v in items)
  return i32(19 | (1 << 9), len(items)) + body + names_attr([k for k, _ in items], first)


def test_unserialize_vectors():
  assert rserialize.unserialize(HEADER + strsxp("a", None, "é")).values == ["a", None, "é"]
  assert rserialize.unserialize(HEADER + i32(13, 3, 1, -(2**31), 7)).values == [1, None, 7]
  real = rserialize.unserialize(HEADER + i32(14, 2) + struct.pack(">2d", 1.5, -2.0))
  assert real.values == [1.5, -2.0]


def test_named_list_and_symbol_reference():
  # items are read before their list's attributes, so the inner list defines the symbol
  # "names" and the outer list refers back to it (REFSXP)
  inner = named_list([("x", strsxp("p"))], first=True)
  obj = rserialize.unserialize(HEADER + i32(19 | (1 << 9), 2) + strsxp("u") + inner
                               + names_attr(["first", "second"], first=False))
  d = obj.as_dict()
  assert d["first"].values == ["u"]
  assert d["second"].as_dict()["x"].values == ["p"]
  with pytest.raises(rserialize.RFormatError, match="reference"):
    rserialize.unserialize(HEADER + i32(255 | (3 << 8)))


def test_lazyload_db(tmp_path):
  # two variables, each a character vector, compressed with zlib (compressed=TRUE)
  blobs, variables, off = b"", [], 0
  for name, vals in (("book_a", ("Line one", "", "Line three")), ("book_b", ("Only line",))):
    raw = HEADER + strsxp(*vals)
    blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
    variables.append((name, i32(13, 2, off, len(blob))))
    blobs += blob
    off += len(blob)
  # the outer list's names are read after its items: the first "names" symbol is the one
  # inside "variables", the outer one is a reference
  index = HEADER + i32(19 | (1 << 9), 3) + named_list(variables, first=True) + i32(19, 0) \
      + i32(10, 1, 1) + names_attr(["variables", "references", "compressed"], first=False)
  (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(index))
  (tmp_path / "Rdata.rdb").write_bytes(blobs)
  data = rserialize.read_lazyload_db(tmp_path / "Rdata.rdx")
  assert sorted(data) == ["book_a", "book_b"]
  assert data["book_a"].values == ["Line one", "", "Line three"]
  assert data["book_b"].values == ["Only line"]


def test_errors(tmp_path):
  with pytest.raises(rserialize.RFormatError, match="XDR"):
    rserialize.unserialize(b"A\n" + HEADER[2:])
  with pytest.raises(rserialize.RFormatError, match="truncated"):
    rserialize.unserialize(HEADER + i32(16, 5))
  with pytest.raises(FileNotFoundError, match="missing"):
    rserialize.read_lazyload_db(tmp_path / "none.rdx")
  (tmp_path / "x.rdx").write_bytes(b"junk")
  (tmp_path / "x.rdb").write_bytes(b"")
  with pytest.raises(rserialize.RFormatError, match="not a compressed R serialization"):
    rserialize.read_lazyload_db(tmp_path / "x.rdx")
