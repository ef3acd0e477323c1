"""Guards against out-of-range picks: a clear error where one can be raised, NaN otherwise.

A pick outside [0, M) would make the kernel DMA another chunk (or fault), and jnp indexing would
wrap negatives and clamp the rest: silent garbage either way. So:
* concrete idx (eager calls): ``ValueError`` naming the bad entries, before anything runs;
* traced idx in checked mode (``interpret`` set, i.e. tests/debugging): a host callback raises
  the same error when the step runs;
* traced idx otherwise (compiled training): the pick's weight becomes NaN and its index 0, so the
  output of that query chunk (and the loss) is NaN, never plausibly wrong.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _message(idx: np.ndarray, n_mem: int) -> str:
  bad = np.argwhere((idx < 0) | (idx >= n_mem))
  first = ", ".join(f"idx{tuple(int(x) for x in p)}={int(idx[tuple(p)])}" for p in bad[:5])
  return (f"gca_attention: {len(bad)} picked chunk ids are outside [0, M={n_mem}) (first: {first}); "
          "every pick must name a memory chunk, mask unwanted picks with weight 0 instead")


def _raise_if_bad(idx, n_mem: int) -> None:
  idx = np.asarray(idx)
  if ((idx < 0) | (idx >= n_mem)).any():
    raise ValueError(_message(idx, n_mem))


def guard_picks(idx, w, n_mem: int, *, checked: bool):
  """Returns (idx, w) safe to use: raises on bad picks when it can, else NaN-poisons them."""
  if not isinstance(idx, jax.core.Tracer):
    _raise_if_bad(idx, n_mem)
    return idx, w
  if checked:
    jax.debug.callback(functools.partial(_raise_if_bad, n_mem=n_mem), idx)
  ok = (idx >= 0) & (idx < n_mem)
  return jnp.where(ok, idx, 0), jnp.where(ok, w, jnp.nan).astype(w.dtype)
