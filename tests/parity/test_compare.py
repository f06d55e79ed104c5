"""Comparison statistics, checked against values computed independently here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from portanet.parity.compare import compare


def test_identical_tensors_pass_with_zero_error():
    a = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    s = compare(a, a.copy())
    assert s.passed and s.max_abs == 0.0 and s.max_rel == 0.0 and s.top1 == 1.0
    assert s.cosine == pytest.approx(1.0, abs=1e-12)


def test_statistics_match_hand_computed_values():
    ref = np.array([[1.0, 3.0, 2.0], [0.5, -4.0, 0.25]], np.float32)
    got = np.array([[1.0, 2.0, 3.5], [0.5, -4.0, 0.25]], np.float32)
    s = compare(ref, got)
    assert s.max_abs == pytest.approx(1.5)
    assert s.max_rel == pytest.approx(1.5 / 4.0)
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    assert s.cosine == pytest.approx(r @ g / math.sqrt((r @ r) * (g @ g)))
    assert s.top1 == 0.5  # row 0 arg-max moves from 1 to 2, row 1 keeps 2
    assert not s.passed


def test_elementwise_tolerance_is_numpy_allclose():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(1000).astype(np.float32)
    for eps in (5e-6, 2e-5, 1e-3):
        got = ref + np.float32(eps)
        assert compare(ref, got).passed == bool(np.allclose(got, ref, rtol=1e-4, atol=1e-5))


def test_scale_relative_test_tolerates_near_zero_elements():
    ref = np.array([1000.0, 1e-6], np.float32)
    got = np.array([1000.0, 1e-6 + 1e-3], np.float32)  # far off for the tiny element only
    assert not compare(ref, got).passed
    assert compare(ref, got, elementwise=False).passed  # 1e-3 <= 1e-5 + 1e-4 * 1000


def test_shape_mismatch_and_nan_fail_with_a_reason():
    s = compare(np.zeros((2, 3)), np.zeros((3, 3)))
    assert not s.passed and "shape" in s.problem
    s = compare(np.ones(3), np.array([1.0, np.nan, 1.0]))
    assert not s.passed and "NaN" in s.problem


def test_shape_sets_group_named_inputs():
    from portanet.parity.inputs import parse_shape_sets

    assert parse_shape_sets(["1x3x8x8", "4x3x8x8"]) == [{"": [1, 3, 8, 8]}, {"": [4, 3, 8, 8]}]
    assert parse_shape_sets(["a=1x3", "b=1x5", "a=4x3", "b=4x5"]) == [
        {"a": [1, 3], "b": [1, 5]}, {"a": [4, 3], "b": [4, 5]}]
