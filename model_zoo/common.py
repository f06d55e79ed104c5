"""Shared helpers for model_zoo builders: the cache directory for generated files."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cache_dir(*parts: str) -> Path:
    """``$PORTANET_CACHE`` or ``<repo>/.cache/model_zoo``, plus ``parts``; created on demand."""
    base = Path(os.environ.get("PORTANET_CACHE", REPO / ".cache" / "model_zoo"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
