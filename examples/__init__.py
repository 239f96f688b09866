"""Examples of using lightning-less from your own code (importable from the repository root)."""
