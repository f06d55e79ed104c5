"""Parity: reference runners per source framework, comparison, bisection, reports."""
