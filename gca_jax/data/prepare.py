"""Tokenises a corpus once into token shards that each training host reads its part of.

  python -m gca_jax.data.prepare --corpus=books --output=gs://BUCKET/books-gpt2 --tokenizer=gpt2

The corpus (see ``gca_jax.data.prepare_inputs``) is cut into ``--num_shards`` units; worker
processes tokenise them in parallel, each writing its train and validation shard
(``gca_jax.data.shards`` describes the files) and then a small record in ``units/``. A killed
prepare resumes when rerun: units with a record are kept. ``manifest.json`` (tokenizer
fingerprint, counts, SHA-256 of every file) is written last, atomically; readers accept a
folder only once it exists. A document is held out for validation when
``sha256("<seed>:<id>")`` read as a fraction of 2**64 is below ``--val_fraction``.
``--verify=PATH`` re-checks every file of a prepared folder against its manifest.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time

import numpy as np
from etils import epath

from gca_jax.data import prepare_inputs, shards
from gca_jax.data.prepare_inputs import PrepareError

PLAN, UNITS = "plan.json", "units"
SPM_FILE = "tokenizer.model"


def is_validation(doc_id: str, val_fraction: float, seed: int) -> bool:
  h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big")
  return h < val_fraction * 2.0**64


def _write(path: epath.Path, data: bytes | str) -> None:
  """Writes ``path`` through a temporary sibling, so it never exists half-written."""
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  if isinstance(data, str):
    tmp.write_text(data)
  else:
    tmp.write_bytes(data)
  tmp.replace(path)


def _sha(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def make_tokenizer(kind: str, tokenizer_model: str, corpus: str, vocab_size: int, cache_dir, log):
  from gca_jax.config import DataConfig
  from gca_jax.data import gpt2, tokenizer
  vocab = gpt2.VOCAB_SIZE if kind == "gpt2" else vocab_size
  cfg = DataConfig(corpus=corpus, tokenizer=kind, tokenizer_model=tokenizer_model,
                   vocab_size=vocab, cache_dir=cache_dir)
  return tokenizer.tokenizer_from_config(cfg, log=log)


def _tokenizer_info(tok) -> dict:
  info = {"name": tok.name, "fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
          "sep_id": tok.sep_id, "pad_id": tok.pad_id, "landmark_id": tok.landmark_id}
  if tok.name == "sentencepiece":
    info["model_file"] = SPM_FILE
  return info


# ------------------------------------------------------------------------------ one unit

_WORKER_TOK: dict = {}


def _worker_tokenizer(name: str, proto: bytes | None):
  key = (name, hashlib.sha256(proto or b"").hexdigest())
  if key not in _WORKER_TOK:
    if name == "gpt2":
      from gca_jax.data.gpt2 import GPT2Tokenizer
      _WORKER_TOK[key] = GPT2Tokenizer()
    else:
      from gca_jax.data.tokenizer import Tokenizer
      _WORKER_TOK[key] = Tokenizer(proto)
  return _WORKER_TOK[key]


def _pack(encoded: list[list[int]], sep: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
  """Flat tokens (each document followed by ``sep``) and the document offsets."""
  off = np.zeros(len(encoded) + 1, np.int64)
  np.cumsum([len(e) + 1 for e in encoded], out=off[1:])
  flat = np.empty(int(off[-1]), dtype)
  for d, e in enumerate(encoded):
    flat[off[d]:off[d + 1] - 1] = e
  flat[off[1:] - 1] = sep
  return flat, off


def tokenize_unit(job: dict) -> dict:
  """Tokenises unit ``job['unit']``, writes its shards and then its record; returns the record."""
  t0 = time.time()
  out, k, n = epath.Path(job["output"]), job["unit"], job["num_shards"]
  tok = _worker_tokenizer(job["tokenizer"], job["proto"])
  texts = {s: [] for s in shards.SPLITS}
  rec = {"unit": k, "plan_key": job["plan_key"], "documents": 0, "empty_documents": 0,
         "text_bytes": 0, "splits": {}}
  for doc in prepare_inputs.read_unit(job["kind"], job["root"], job["files"], job["pieces"]):
    if not doc["text"]:
      rec["empty_documents"] += 1
      continue
    rec["documents"] += 1
    rec["text_bytes"] += len(doc["text"].encode("utf-8"))
    split = "validation" if is_validation(doc["id"], job["val_fraction"], job["seed"]) else "train"
    texts[split].append(doc["text"])
  dtype = np.dtype(job["dtype"])
  for split in shards.SPLITS:
    flat, off = _pack(tok.encode_batch(texts[split], num_threads=job["threads"]), tok.sep_id, dtype)
    name = shards.shard_name(split, k, n)
    buf = io.BytesIO()
    np.save(buf, off)
    files = {"tokens": (f"{name}.tokens", flat.astype(dtype.newbyteorder("<")).tobytes()),
             "docs": (f"{name}.docs.npy", buf.getvalue())}
    for fname, data in files.values():
      _write(out / fname, data)
    rec["splits"][split] = {"tokens": files["tokens"][0], "docs": files["docs"][0],
                            "num_tokens": int(off[-1]), "num_docs": len(off) - 1,
                            "sha256": {key: _sha(d) for key, (_, d) in files.items()}}
  rec["seconds"] = round(time.time() - t0, 3)
  _write(out / UNITS / f"unit-{k:05d}.json", json.dumps(rec) + "\n")
  return rec


# ------------------------------------------------------------------------------ the run


def _check_output(out: epath.Path) -> None:
  try:
    if out.exists() and not out.is_dir():
      raise PrepareError(f"--output={out} is an existing file; pass a folder (it is created)")
    (out / UNITS).mkdir(parents=True, exist_ok=True)
  except PrepareError:
    raise
  except Exception as e:  # noqa: BLE001 - permissions, network, bad URL
    raise PrepareError(f"cannot write to --output={out} ({type(e).__name__}: {e}); pass a folder "
                       "you can write to (local or gs://...)") from e


def _done_record(out: epath.Path, k: int, plan_key: str, itemsize: int) -> dict | None:
  """The unit's record if it belongs to this plan and its files are all there."""
  path = out / UNITS / f"unit-{k:05d}.json"
  if not path.exists():
    return None
  try:
    rec = json.loads(path.read_text())
  except json.JSONDecodeError:
    return None
  if rec.get("plan_key") != plan_key:
    return None
  for s in rec["splits"].values():
    t, d = out / s["tokens"], out / s["docs"]
    if not (t.exists() and d.exists()) or t.stat().length != s["num_tokens"] * itemsize:
      return None
  return rec


def _clear(out: epath.Path) -> None:
  """Removes what a prepare wrote (only its own file names)."""
  for p in out.iterdir():
    if p.name == UNITS:
      p.rmtree()
    elif p.name in (PLAN, shards.MANIFEST, SPM_FILE) or p.name.startswith(shards.SPLITS):
      p.unlink()


def prepare(corpus: str, output: str, *, tokenizer: str = "gpt2", tokenizer_model: str = "",
            vocab_size: int = 4096, num_shards: int = 0, val_fraction: float = 0.05,
            seed: int = 0, workers: int = 0, cache_dir=None, force: bool = False,
            progress: bool = True, log=print) -> dict:
  """Prepares ``corpus`` into ``output`` (resuming a killed run); returns the manifest."""
  if not 0.0 <= val_fraction < 1.0:
    raise PrepareError(f"--val_fraction={val_fraction} must be in [0, 1)")
  out = epath.Path(output)
  _check_output(out)
  kind, root, files, sizes = prepare_inputs.resolve(corpus, cache_dir)
  total_bytes = sum(int((root / f).stat().length) for f in files)
  n = num_shards or prepare_inputs.auto_num_shards(kind, sizes, total_bytes)
  units = prepare_inputs.plan_units(kind, files, sizes, n)
  tok = make_tokenizer(tokenizer, tokenizer_model, corpus, vocab_size, cache_dir, log)
  dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
  plan = {"format": shards.FORMAT, "version": shards.VERSION, "source": corpus, "kind": kind,
          "root": str(root), "files": files, "sizes": sizes, "units": units,
          "tokenizer": _tokenizer_info(tok), "dtype": dtype.name, "num_shards": n,
          "val_fraction": val_fraction, "seed": seed}
  plan_key = _sha(json.dumps(plan, sort_keys=True).encode())[:16]
  if (out / PLAN).exists():
    old = json.loads((out / PLAN).read_text())
    if old.get("plan_key") != plan_key and not force:
      diff = sorted(k for k in plan if old.get(k) != plan[k])
      raise PrepareError(f"{out} holds a prepare with other settings (differing: {diff}); use "
                         "another --output, or pass --force to replace it")
    if old.get("plan_key") != plan_key:
      _clear(out)
      (out / UNITS).mkdir(parents=True, exist_ok=True)
  if tok.name == "sentencepiece":
    _write(out / SPM_FILE, tok.model_proto())
  _write(out / PLAN, json.dumps({**plan, "plan_key": plan_key}, indent=1) + "\n")

  t0 = time.time()
  done = {k: r for k in range(n) if (r := _done_record(out, k, plan_key, dtype.itemsize))}
  todo = [k for k in range(n) if k not in done]
  workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
  if done:
    log(f"resuming {out}: {len(done)}/{n} shards already prepared")
  proto = tok.model_proto() if tok.name == "sentencepiece" else None
  jobs = [{"output": str(out), "unit": k, "num_shards": n, "kind": kind, "root": str(root),
           "files": files, "pieces": units[k], "tokenizer": tok.name, "proto": proto,
           "dtype": dtype.name, "val_fraction": val_fraction, "seed": seed, "plan_key": plan_key,
           "threads": max(1, (os.cpu_count() or 1) // workers)} for k in todo]
  scale = total_bytes / sum(sizes)  # sizes are records for ArrayRecord
  unit_bytes = {k: int(scale * sum(b - a for _, a, b in units[k])) for k in todo}
  new = _run(jobs, workers, unit_bytes, progress)
  done.update(new)
  wall = time.time() - t0
  manifest = _manifest(plan, plan_key, [done[k] for k in range(n)], new, wall, workers)
  _write(out / shards.MANIFEST, json.dumps(manifest, indent=1) + "\n")
  p = manifest["prepare"]
  log(f"prepared {out}: {manifest['documents']} documents, "
      f"{manifest['splits']['train']['num_tokens']:,} train + "
      f"{manifest['splits']['validation']['num_tokens']:,} validation tokens in {n} shards; "
      f"this run: {p['text_mb']:.1f} MB in {wall:.1f}s = {p['text_mb_per_s']:.2f} MB/s, "
      f"{p['tokens_per_s']:,.0f} tokens/s ({workers} workers)")
  return manifest


def _run(jobs: list[dict], workers: int, unit_bytes: dict, progress: bool) -> dict[int, dict]:
  """Runs the unit jobs (in worker processes when ``workers > 1``) with a progress bar."""
  from tqdm import tqdm
  bar = tqdm(total=sum(unit_bytes.values()), unit="B", unit_scale=True, desc="prepare",
             disable=not progress or not jobs)
  out = {}
  try:
    if workers == 1:
      for job in jobs:
        out[job["unit"]] = _guard(job)
        bar.update(unit_bytes[job["unit"]])
      return out
    ctx = multiprocessing.get_context("spawn")  # no forked tokenizer or thread state
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = {pool.submit(_guard, job): job["unit"] for job in jobs}
      for f in cf.as_completed(futures):
        out[futures[f]] = f.result()
        bar.update(unit_bytes[futures[f]])
    return out
  finally:
    bar.close()


def _guard(job: dict) -> dict:
  try:
    return tokenize_unit(job)
  except PrepareError:
    raise
  except Exception as e:  # noqa: BLE001 - name the unit; picklable across processes
    raise PrepareError(f"shard {job['unit']} failed ({type(e).__name__}: {e}); fix the input "
                       "and rerun: finished shards are kept") from None


def _manifest(plan: dict, plan_key: str, recs: list[dict], new: dict, wall: float, workers: int) -> dict:
  splits = {}
  for split in shards.SPLITS:
    entries = [r["splits"][split] for r in recs]
    splits[split] = {"num_tokens": sum(e["num_tokens"] for e in entries),
                     "num_docs": sum(e["num_docs"] for e in entries), "shards": entries}
  empty = [g for g, e in enumerate(splits["train"]["shards"]) if e["num_docs"] == 0]
  if empty:
    raise PrepareError(f"train shard {empty[0]} of {plan['num_shards']} has no document: the "
                       "corpus has too few (or too uneven) documents; pass a smaller --num_shards")
  new_bytes = sum(r["text_bytes"] for r in new.values())
  new_tokens = sum(e["num_tokens"] for r in new.values() for e in r["splits"].values())
  keys = ("format", "version", "source", "kind", "tokenizer", "dtype", "num_shards",
          "val_fraction", "seed")
  return {**{k: plan[k] for k in keys}, "plan_key": plan_key,
          "documents": sum(r["documents"] for r in recs),
          "empty_documents": sum(r["empty_documents"] for r in recs),
          "text_bytes": sum(r["text_bytes"] for r in recs), "splits": splits,
          "prepare": {"seconds": round(wall, 3), "workers": workers, "shards_this_run": len(new),
                      "text_mb": new_bytes / 1e6,
                      "text_mb_per_s": new_bytes / 1e6 / max(wall, 1e-9),
                      "tokens_per_s": new_tokens / max(wall, 1e-9)}}


def verify(root: str) -> list[str]:
  """Problems found when checking every file of a prepared folder against its manifest."""
  m = shards.load_manifest(root)
  problems, base = [], epath.Path(root)
  for split in shards.SPLITS:
    for e in m["splits"][split]["shards"]:
      for key in ("tokens", "docs"):
        path = base / e[key]
        if not path.exists():
          problems.append(f"{path} is missing")
        elif _sha(path.read_bytes()) != e["sha256"][key]:
          problems.append(f"{path} is corrupt (SHA-256 differs from the manifest)")
  return problems


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m gca_jax.data.prepare", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--corpus", default="books", help="fetched corpus name or a path")
  ap.add_argument("--output", help="folder to write (local or gs://...)")
  ap.add_argument("--tokenizer", default="gpt2", choices=("gpt2", "sentencepiece"))
  ap.add_argument("--tokenizer_model", default="", help="your own sentencepiece .model")
  ap.add_argument("--vocab_size", type=int, default=4096, help="sentencepiece trained on the corpus")
  ap.add_argument("--num_shards", type=int, default=0,
                  help="shards per split (0: about 128 MB of text each, a multiple of 16); the "
                       "number of training processes must divide it")
  ap.add_argument("--val_fraction", type=float, default=0.05)
  ap.add_argument("--seed", type=int, default=0, help="seeds the validation split")
  ap.add_argument("--workers", type=int, default=0, help="tokenising processes (0: CPU count)")
  ap.add_argument("--cache_dir", default=None)
  ap.add_argument("--force", action="store_true", help="replace a prepare with other settings")
  ap.add_argument("--no_progress", action="store_true")
  ap.add_argument("--verify", default=None, help="check a prepared folder's files, then exit")
  a = ap.parse_args(argv)
  from gca_jax.config import ConfigError
  from gca_jax.data.sources import SourceError
  from gca_jax.data.tokenizer import TokenizerError
  try:
    if a.verify:
      problems = verify(a.verify)
      print("\n".join(problems) or f"{a.verify}: every file matches its manifest")
      return 1 if problems else 0
    if not a.output:
      raise PrepareError("--output is required (a folder, local or gs://...)")
    if a.num_shards < 0 or a.workers < 0:
      raise PrepareError("--num_shards and --workers must be >= 0")
    prepare(a.corpus, a.output, tokenizer=a.tokenizer, tokenizer_model=a.tokenizer_model,
            vocab_size=a.vocab_size, num_shards=a.num_shards, val_fraction=a.val_fraction,
            seed=a.seed, workers=a.workers, cache_dir=a.cache_dir, force=a.force,
            progress=not a.no_progress)
  except (PrepareError, shards.ShardError, ConfigError, TokenizerError, SourceError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
