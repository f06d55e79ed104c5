"""Lowering functions, one module per op family; each registers into ``registry``."""
