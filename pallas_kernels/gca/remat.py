"""Names of what a GCA kernel's forward pass leaves for its backward pass, for remat policies.

Under ``jax.checkpoint`` a layer's backward pass recomputes its forward, the GCA forward kernel
included, unless the policy saves that kernel's outputs. The kernels' forward rules tag their
output and per-pick log-sum-exp with these names; a policy that saves them
(``jax.checkpoint_policies.save_only_these_names(*GCA_SAVED)``, what
``ExecutionConfig.remat_policy="save_gca"`` uses) leaves no forward kernel in the backward pass.
The XLA path has no kernel and tags nothing.
"""

from __future__ import annotations

from jax.ad_checkpoint import checkpoint_name

GCA_SAVED = ("gca_out", "gca_lse")


def tag_saved(out, lse):
  """``out`` and ``lse`` of a forward kernel, tagged with ``GCA_SAVED``."""
  return checkpoint_name(out, GCA_SAVED[0]), checkpoint_name(lse, GCA_SAVED[1])
