"""Keras handlers, one module per op family; each registers with ``builder.handler``."""
