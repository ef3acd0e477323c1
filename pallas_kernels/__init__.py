"""Fused kernels for gca-jax (Pallas), each beside a pure-jnp reference."""
