"""Comparison of a converted model's tensor with the source framework's.

Per tensor: max absolute error, max error relative to the reference's scale (its largest
magnitude), cosine similarity, top-1 agreement (for outputs with a class axis), and pass/fail.
A final output passes when every element satisfies ``|got - ref| <= atol + rtol * |ref|``
(numpy's ``allclose``). Intermediate layers during bisection use the scale-relative test
``max|got - ref| <= atol + rtol * max|ref|``, which does not flag near-zero elements of
large-magnitude activations as divergent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


@dataclass
class TensorStats:
    """How closely ``got`` matches ``ref``."""

    shape: list[int]
    max_abs: float
    #: max |got - ref| / max |ref| (0 when both are all zero)
    max_rel: float
    cosine: float
    #: fraction of rows whose arg-max agrees (None for tensors without a class axis)
    top1: float | None
    passed: bool
    #: why a comparison failed before looking at values (shape or dtype mismatch, NaN)
    problem: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def _top1(ref: np.ndarray, got: np.ndarray) -> float | None:
    # a class axis: (N, C) scores, or (N, C, ...) maps compared per position along axis 1
    if ref.ndim < 2 or ref.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(ref, axis=1) == np.argmax(got, axis=1)))


def compare(
    ref: Any,
    got: Any,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    elementwise: bool = True,
) -> TensorStats:
    """Compare ``got`` with the reference ``ref``; ``elementwise=False`` uses the scale-relative test."""
    r = np.asarray(ref)
    g = np.asarray(got)
    if r.shape != g.shape:
        if r.size == g.size:  # e.g. (N, 10) vs (N, 10, 1, 1): same values, squeezed differently
            g = g.reshape(r.shape)
        else:
            return TensorStats(list(r.shape), math.inf, math.inf, 0.0, None, False,
                               f"shape {list(g.shape)} differs from the source's {list(r.shape)}")
    if r.dtype.kind not in "fc" or g.dtype.kind not in "fc":
        equal = bool(np.array_equal(r, g))
        diff = float(np.max(np.abs(r.astype(np.float64) - g.astype(np.float64)))) if r.size else 0.0
        return TensorStats(list(r.shape), diff, diff, 1.0 if equal else 0.0, None, equal)
    r64 = r.astype(np.float64)
    g64 = g.astype(np.float64)
    if not np.all(np.isfinite(g64) == np.isfinite(r64)):
        return TensorStats(list(r.shape), math.inf, math.inf, 0.0, _top1(r64, g64), False,
                           "non-finite values (NaN/Inf) where the source has finite ones")
    finite = np.isfinite(r64)
    diff = np.abs(np.where(finite, g64 - r64, 0.0))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(np.where(finite, r64, 0.0)).max()) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    if elementwise:
        passed = bool(np.all(diff <= atol + rtol * np.abs(np.where(finite, r64, 0.0))))
    else:
        passed = max_abs <= atol + rtol * scale
    cos = _cosine(np.where(finite, r64, 0.0), np.where(finite, g64, 0.0))
    return TensorStats(list(r.shape), max_abs, max_rel, cos, _top1(r64, g64), passed)
