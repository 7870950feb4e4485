"""Indexed datasets: building (``fm9g index``) and reading with O(1) random access."""
