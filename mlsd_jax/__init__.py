"""mlsd_jax: machine-learning system designs as fast, end-to-end JAX systems."""

__version__ = "0.1.0"
