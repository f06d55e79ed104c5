"""Array copies that NumPy makes slowly.

``np.ascontiguousarray`` of a transposed view walks the source with large strides; for the
common case of weights stored channels-last and needed channels-first (a convolution
kernel ``(kh, kw, in, out) -> (out, in, kh, kw)``) a tile-by-tile transpose that stays in
the cache is several times faster on large kernels.
"""

from __future__ import annotations

import numpy as np

#: tile edge of the blocked 2-D transpose (a 256 x 256 float32 tile is 256 KiB)
TILE = 256
#: below this many elements the plain NumPy copy is as fast
_SMALL = 1 << 16


def transpose_2d(matrix: np.ndarray) -> np.ndarray:
    """``matrix.T`` as a new C-contiguous array, copied tile by tile."""
    rows, cols = matrix.shape
    out = np.empty((cols, rows), dtype=matrix.dtype)
    for i in range(0, rows, TILE):
        for j in range(0, cols, TILE):
            out[j:j + TILE, i:i + TILE] = matrix[i:i + TILE, j:j + TILE].T
    return out


def contiguous(arr: np.ndarray) -> np.ndarray:
    """``np.ascontiguousarray(arr)`` (same values, shape and dtype; ``arr`` itself if already
    C-contiguous), faster when ``arr`` is a large transposed view that moves the source's
    last axis to the front."""
    if arr.flags.c_contiguous or arr.ndim < 2 or arr.size < _SMALL or any(s <= 0 for s in arr.strides):
        return np.ascontiguousarray(arr)
    order = tuple(int(a) for a in np.argsort([-s for s in arr.strides], kind="stable"))
    src = arr.transpose(order)  # the contiguous array arr is a view of (axis j of src = axis order[j] of arr)
    if not src.flags.c_contiguous:
        return np.ascontiguousarray(arr)
    n = arr.ndim
    p = [0] * n  # axis i of arr is axis p[i] of src
    for j, a in enumerate(order):
        p[a] = j
    if p[0] != n - 1:
        return np.ascontiguousarray(arr)
    # (.., c) -> (c, ..): one blocked 2-D transpose; then the remaining axes, now all behind
    # the leading one, are put in place by NumPy (short strides only)
    lead = transpose_2d(src.reshape(-1, src.shape[-1])).reshape(src.shape[-1], *src.shape[:-1])
    rest = [0] + [a + 1 for a in p[1:]]
    return lead if rest == list(range(n)) else np.ascontiguousarray(lead.transpose(rest))
