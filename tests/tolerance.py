"""The project's default parity tolerance, for tests that compare arrays directly."""

from __future__ import annotations

import numpy as np


def parity_bound(ref: np.ndarray) -> float:
    """``1e-5 + 1e-4 * max|ref|``: the bound on ``max|got - ref|`` (max over an empty ``ref`` is 0)."""
    return 1e-5 + 1e-4 * float(np.abs(np.asarray(ref, dtype=np.float64)).max(initial=0.0))
