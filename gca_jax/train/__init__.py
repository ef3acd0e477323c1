"""Training: optimiser, pure train/eval steps, the loop."""
