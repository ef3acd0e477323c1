"""gca-jax: long-context language models with Grouped Cross Attention (DRT) in JAX/Flax."""

__version__ = "0.1.0"
