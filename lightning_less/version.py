"""The library version (one place; the package, manifests and --version read it)."""

__version__ = "0.2.0.dev0"
