"""BUILD covers the tree: every Python module belongs to a py_library/py_binary and every test
file to a py_test, so the Bazel targets cannot drift from the packages."""

from __future__ import annotations

import fnmatch
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("gca_jax", "pallas_kernels", "experiments", "launch", "benchmarks")


def _load_build():
  """Evaluates BUILD (Starlark here is a Python subset) with recording stand-ins for the rules."""
  targets = []

  def rule(kind):
    def record(**kw):
      targets.append({"kind": kind, **kw})
    return record

  def glob_(include, exclude=()):
    return [("glob", pat, tuple(exclude)) for pat in include]

  env = {"load": lambda *a, **k: None, "py_library": rule("py_library"), "py_test": rule("py_test"),
         "py_binary": rule("py_binary"), "glob": glob_, "package": lambda **k: None,
         "requirement": lambda name: f"@pypi//{name}", "filegroup": rule("filegroup"),
         "exports_files": lambda *a, **k: None}
  with open(os.path.join(REPO, "BUILD")) as f:
    exec(compile(f.read(), "BUILD", "exec"), env)  # noqa: S102 - our own build file
  return targets


def _matches(path, srcs):
  for s in srcs:
    if isinstance(s, tuple):
      _, pat, exclude = s
      if _glob_match(path, pat) and not any(_glob_match(path, e) for e in exclude):
        return True
    elif s == path:
      return True
  return False


def _glob_match(path, pat):
  if "**" in pat:
    head, tail = pat.split("**", 1)
    return path.startswith(head) and fnmatch.fnmatch(os.path.basename(path), tail.lstrip("/"))
  return fnmatch.fnmatch(path, pat) and path.count("/") == pat.count("/")


def _files(pattern):
  return sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, pattern), recursive=True))


def test_every_module_has_a_target():
  targets = _load_build()
  lib_srcs = [s for t in targets if t["kind"] in ("py_library", "py_binary") for s in t.get("srcs", [])]
  missing = [p for pkg in PACKAGES for p in _files(f"{pkg}/**/*.py") if not _matches(p, lib_srcs)]
  assert not missing, f"add these modules to a py_library/py_binary in BUILD: {missing}"


def test_every_test_file_has_a_py_test():
  targets = _load_build()
  tests = {s for t in targets if t["kind"] == "py_test" for s in t.get("srcs", []) if isinstance(s, str)}
  missing = [p for p in _files("tests/test_*.py") if p not in tests]
  assert not missing, f"add a py_test for each of: {missing}"
  stale = sorted(p for p in tests if p.startswith("tests/test_") and not os.path.exists(os.path.join(REPO, p)))
  assert not stale, f"py_test targets name missing files: {stale}"


def test_target_names_unique_and_deps_resolve():
  targets = _load_build()
  names = [t["name"] for t in targets]
  assert len(names) == len(set(names))
  for t in targets:
    for dep in t.get("deps", []):
      if dep.startswith(":"):
        assert dep[1:] in names, f"{t['name']} depends on unknown target {dep}"
