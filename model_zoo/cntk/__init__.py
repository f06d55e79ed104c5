"""CNTK v2 reference models (written without CNTK) with PyTorch twins."""
