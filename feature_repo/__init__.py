"""Feast definitions, one sub-package per use case with its model spec and batch feature SQL."""
