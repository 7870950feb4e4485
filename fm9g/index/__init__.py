"""Indexed datasets: building (fm9g index), reading with O(1) random access, preparing raw data."""
