"""IR -> readable PyTorch code (see ``writer``)."""
