"""PyTorch emitters, one module per op family; each registers with ``writer.emitter``."""
