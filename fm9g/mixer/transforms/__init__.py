"""Placeholder: filled in by its stage (see issues)."""
