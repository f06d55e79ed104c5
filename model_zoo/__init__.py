"""Builders of reference models in each source framework (code, not binaries)."""
