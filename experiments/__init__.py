"""Experiment presets for gca-jax."""
