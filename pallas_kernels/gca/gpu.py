"""GPU: no Pallas kernel; ``impl="auto"`` runs the XLA path there. Why, for the record.

With jax 0.10 a Pallas GPU kernel would be written either for the Triton backend or for Mosaic
GPU:

* Triton: ``pallas_call`` on GPU has no scalar prefetch, so the top-k ids cannot drive the
  BlockSpec index maps; the kernel would read ``idx`` itself and gather the chunks with manual
  loads, i.e. a second kernel design, not a port of ``tpu.py``. The Triton backend is also
  being deprecated from jax 0.11 (DESIGN.md), so the work would have a short life.
* Mosaic GPU: Hopper/Blackwell only (warpgroup MMA, TMA), still an experimental API that changes
  between releases, and a kernel for it cannot be compiled, run or timed without such a GPU.
  No GPU is available to this project's CI, so it would ship untested.

The XLA path (``reference.py`` under ``jax.checkpoint``) is exact, differentiable, and XLA:GPU
fuses its gather + einsums well enough for the chunk sizes of DRT (S = 63/64, K <= 32). Revisit
with Mosaic GPU once there is a GPU to test on and its API is stable.
"""

from __future__ import annotations

GPU_KERNEL_AVAILABLE = False
