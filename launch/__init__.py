"""Launch gca-jax runs: TPU VMs over gcloud (`launch.tpu`) and GPU clusters over Slurm (`launch.slurm`).

Nothing here imports jax; the launcher runs on a laptop with only the standard library and absl.
"""
