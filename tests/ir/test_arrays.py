"""portanet.ir.arrays.contiguous: the same array as np.ascontiguousarray (reference), for
every permutation of large and small arrays, views with offsets and non-float dtypes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from portanet.ir.arrays import contiguous, transpose_2d


@pytest.mark.parametrize("shape", [(3, 3, 70, 300), (1, 1, 300, 513), (257, 600), (2, 5, 7)])
def test_every_permutation_matches_numpy(shape) -> None:
    base = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    for perm in itertools.permutations(range(len(shape))):
        view = base.transpose(perm)
        got = contiguous(view)
        assert got.flags.c_contiguous and got.shape == view.shape and got.dtype == view.dtype
        np.testing.assert_array_equal(got, np.ascontiguousarray(view))


def test_sliced_and_integer_views_and_contiguous_input() -> None:
    base = np.arange(4 * 600 * 300, dtype=np.int64).reshape(4, 600, 300)
    for view in (base[1:].transpose(2, 0, 1), base[:, ::2].transpose(2, 1, 0), base[::-1].T):
        np.testing.assert_array_equal(contiguous(view), np.ascontiguousarray(view))
    assert contiguous(base) is base
    m = np.arange(700 * 300, dtype=np.float64).reshape(700, 300)
    np.testing.assert_array_equal(transpose_2d(m), m.T)
