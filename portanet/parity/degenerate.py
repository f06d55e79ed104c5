"""Is a parity verdict informative? Degenerate reference outputs prove nothing.

An untrained model often outputs the same vector for every input (a constant, a near-uniform
softmax), and a broken one outputs NaN: then any conversion that also outputs that constant
"matches", and a PASS says nothing about the converted weights. ``degenerate_notes`` looks at
the source framework's outputs over every sample of every input set and says why they are not
informative, so the report can warn instead of certifying silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: relative spread below which values count as equal (float32 noise of a constant output)
_EQUAL_RTOL = 1e-6
#: max |p - 1/C| below which a probability row counts as uniform
_UNIFORM_ATOL = 1e-3

ADVICE = "parity is not informative; pass --data or trained weights"


def _rows(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """All samples of all input sets as one (samples, features) array; None if shapes differ."""
    flat = [np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1) for a in arrays if np.asarray(a).ndim >= 1]
    if not flat or len({f.shape[1] for f in flat}) != 1:
        return None
    return np.concatenate(flat, axis=0)


def degenerate_reason(arrays: Sequence[np.ndarray]) -> str | None:
    """Why the reference values of one output (one array per input set) prove nothing, or None."""
    arrays = [np.asarray(a) for a in arrays]
    if not arrays or any(a.dtype.kind not in "fc" for a in arrays):
        return None
    if any(not np.all(np.isfinite(a)) for a in arrays):
        return "contain NaN or infinity"
    values = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    if values.size == 0:
        return None
    scale = max(float(np.max(np.abs(values))), 1e-30)
    if float(np.ptp(values)) <= _EQUAL_RTOL * scale:
        return "are constant"
    rows = _rows(arrays)
    if rows is None or rows.shape[1] < 2:
        return None
    if rows.shape[0] > 1 and float(np.max(np.ptp(rows, axis=0))) <= _EQUAL_RTOL * scale:
        return f"are the same for all {rows.shape[0]} input samples"
    is_prob = bool(np.all(rows >= 0)) and bool(np.allclose(rows.sum(axis=1), 1.0, atol=1e-4))
    if is_prob and float(np.max(np.abs(rows - 1.0 / rows.shape[1]))) <= _UNIFORM_ATOL:
        return f"are near-uniform probabilities (every class within {_UNIFORM_ATOL:g} of 1/{rows.shape[1]})"
    return None


def degenerate_notes(outputs: Mapping[str, Sequence[np.ndarray]]) -> list[str]:
    """One note per output whose reference values are degenerate, e.g.
    ``"output 'prob': outputs are constant: parity is not informative; pass --data or trained weights"``."""
    notes = []
    for name, arrays in outputs.items():
        why = degenerate_reason(arrays)
        if why is not None:
            notes.append(f"output '{name}': outputs {why}: {ADVICE}")
    return notes
