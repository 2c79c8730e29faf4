"""fastnorm's version: the one place it is set (pyproject.toml reads it)."""
__version__ = "0.1.0"
