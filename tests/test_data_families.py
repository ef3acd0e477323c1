"""Manual families (``gca_jax.data.families``): POD and HTML reduced to hand-written expected
text, the size-capped file sample against a hand count, extraction from a hand-built .deb (an
``ar`` archive written byte by byte here), and the held-out family sharing no source with the
training corpus."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from etils import epath

from gca_jax.data import families, fetch, sources


def test_pod_to_text_reduces_codes_and_commands():
  pod = ("=head1 NAME\n\nperlx - B<bold> and C<< $a <=> $b >> with L<text|perlfunc/open>\n\n"
         "=over 4\n\n=item * I<nested B<codes>>\n\n=back\n\n=cut\n")
  assert families.pod_to_text(pod) == (
      "NAME\n\nperlx - bold and $a <=> $b with text\n\n\n* nested codes\n\n\n")


def test_html_to_text_drops_head_navigation_and_keeps_pre():
  page = ('<html><head><title>T</title><style>p{}</style></head><body>'
          '<div class="navheader"><a>Prev</a> Up</div>'
          '<h2>2.6. Joins</h2><p>Queries   can\n access <code>tables</code>.</p>'
          '<pre>SELECT *\n  FROM t;</pre><div class="navfooter">Next</div></body></html>')
  assert families.html_to_text(page) == "2.6. Joins\n\nQueries can access tables.\n\nSELECT *\n  FROM t;"


def test_select_keeps_hash_order_within_the_cap():
  names = [f"f{i}" for i in range(6)]
  sizes = [5, 1, 4, 2, 3, 6]
  order = sorted(range(6), key=lambda i: hashlib.sha256(names[i].encode()).digest())
  want, total = [], 0  # by hand: walk the hash order, keep what still fits in 7 bytes
  for i in order:
    if not want or total + sizes[i] <= 7:
      want.append(i)
      total += sizes[i]
  assert families.select(names, sizes, 7) == want and sum(sizes[i] for i in want) <= 7
  assert families.select(["big"], [100], 7) == [0]  # the first file is always kept


def _tar_gz(files: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def make_deb(path, files: dict[str, bytes]):
  """A minimal .deb: ``ar`` magic, then 60-byte headers (name 16, mtime 12, uid 6, gid 6,
  mode 8, size 10, end 2) with even-padded members."""
  members = [("debian-binary", b"2.0\n"), ("control.tar.gz", _tar_gz({"control": b"x"})),
             ("data.tar.gz", _tar_gz(files))]
  out = b"!<arch>\n"
  for name, data in members:
    out += (f"{name + '/':16}{'0':12}{'0':6}{'0':6}{'100644':8}{len(data):<10}".encode() + b"`\n"
            + data + (b"\n" if len(data) % 2 else b""))
  epath.Path(path).write_bytes(out)
  return epath.Path(path)


def test_family_extraction_from_a_deb(tmp_path):
  deb = make_deb(tmp_path / "perl-doc_1_all.deb", {
      "./usr/share/perl/5/pod/perlb.pod": b"=head1 B\n\nC<two>  \r\n",
      "./usr/share/perl/5/pod/perla.pod": b"=head1 A\n\none\n",
      "./usr/share/perl/5/pod/perltoc.pod": b"=head1 TOC\n",  # skipped by name
      "./usr/share/perl/5/other/perlc.pod": b"not under pod/\n",
      "./usr/share/perl/5/pod/readme.txt": b"wrong suffix\n"})
  docs = list(sources.SOURCES["perl"].extract(deb))
  assert docs == [{"id": "perl/perla.pod", "source": "perl", "text": "A\n\none"},
                  {"id": "perl/perlb.pod", "source": "perl", "text": "B\n\ntwo"}]
  empty = make_deb(tmp_path / "python3.11-doc_1_all.deb", {"./usr/share/doc/x.txt": b"x"})
  with pytest.raises(sources.SourceError, match=r"no \.rst\.txt files under a _sources/ folder"):
    list(sources.SOURCES["python"].extract(empty))


def test_held_out_family_shares_no_source_and_manifest_names_licences(monkeypatch, tmp_path):
  assert set(sources.CORPORA["python_docs"]) == {"python"}
  assert not set(sources.CORPORA["python_docs"]) & set(sources.CORPORA["books_manuals"])
  assert {"perl", "postgres"} <= set(sources.CORPORA["books_manuals"])
  deb = make_deb(tmp_path / "python3.11-doc_1_all.deb", {
      "./usr/share/doc/python3.11/html/_sources/library/os.rst.txt": b":mod:`os`\n=========\n"})
  monkeypatch.setattr(sources, "download", lambda pkg, raw_dir: deb)
  path = fetch.fetch_corpus("python_docs", tmp_path / "cache", log=lambda *_: None)
  assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["python/library/os.rst.txt"]
  man = json.loads((path.parent / "manifest.json").read_text())["sources"]["python"]
  assert man["package"] == "python3.11-doc" and man["registry"] == "debian"
  assert man["licence"] == "PSF Licence v2" and man["documents"] == 1
