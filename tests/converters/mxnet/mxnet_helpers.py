"""Helpers shared by the MXNet importer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def load_case(folder: Path, name: str) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """symbol path, params path, inputs, mxnet's outputs of one reference model."""
    with np.load(folder / f"{name}-input.npz") as z:
        feeds = {k: z[k] for k in z.files}
    with np.load(folder / f"{name}-ref.npz") as z:
        ref = {k: z[k] for k in z.files}
    return folder / f"{name}-symbol.json", folder / f"{name}-0000.params", feeds, ref


def manifest(folder: Path, part: str) -> list[dict]:
    return json.loads((folder / f"manifest-{part}.json").read_text())
