"""modular: reusable network components as swappable parameter subtrees (JAX/Flax)."""

__version__ = "0.1.0"
