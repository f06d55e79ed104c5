""".npz datasets, hold-out splits, layout fitting, normalisation and batching (numpy references)."""

from __future__ import annotations

import numpy as np
import pytest

from portanet.data import ArrayDataset, Normalizer, batches, load_data, plan_layout
from portanet.errors import InvalidInputError


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_with_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3, 4, 4)).astype(np.float32), rng.integers(0, 5, 20)
    xt, yt = rng.standard_normal((7, 3, 4, 4)).astype(np.float32), rng.integers(0, 5, 7)
    s = load_data(_save(tmp_path / "d.npz", x=x, y=y, x_test=xt, y_test=yt))
    assert s.format == "npz"
    np.testing.assert_array_equal(s.train.x, x)
    np.testing.assert_array_equal(s.test.y, yt)
    assert s.train.y.dtype == np.int64 and s.train.is_classification


def test_npz_without_test_split_holds_out_a_seeded_fraction(tmp_path):
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.arange(100) % 3
    path = _save(tmp_path / "d.npz", x_train=x, y_train=y)
    a = load_data(path, val_fraction=0.2, seed=3)
    b = load_data(path, val_fraction=0.2, seed=3)
    assert len(a.train) == 80 and len(a.test) == 20
    np.testing.assert_array_equal(a.test.x, b.test.x)
    # every sample lands in exactly one split
    np.testing.assert_array_equal(np.sort(np.concatenate([a.train.x[:, 0], a.test.x[:, 0]])), x[:, 0])
    assert a.info["holdout_fraction"] == 0.2


@pytest.mark.parametrize(
    "arrays,match",
    [({"a": np.zeros(3)}, "expected arrays 'x' and 'y'"),
     ({"x": np.zeros((3, 2)), "y": np.zeros(2)}, "3 samples in x but 2 targets"),
     ({"x": np.zeros((3, 2)), "y": np.zeros(3), "x_test": np.zeros((2, 5)), "y_test": np.zeros(2)},
      r"training samples have shape \(2,\), test samples \(5,\)")],
)
def test_npz_errors(tmp_path, arrays, match):
    with pytest.raises(InvalidInputError, match=match):
        load_data(_save(tmp_path / "bad.npz", **arrays))


def test_npz_not_a_zip(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError, match=r"x\.npz: not a readable \.npz file"):
        load_data(p)


@pytest.mark.parametrize(
    "sample,dims,rule,ref",
    [((28, 28), ["N", 1, 28, 28], "add-channel-first", lambda x: x[:, None]),
     ((28, 28), ["N", 28, 28, 1], "add-channel-last", lambda x: x[:, :, :, None]),
     ((28, 28), ["N", 784], "flatten", lambda x: x.reshape(len(x), 784)),
     ((8, 6, 3), ["N", 3, 8, 6], "nhwc-to-nchw", lambda x: np.moveaxis(x, 3, 1)),
     ((3, 8, 6), ["batch", 8, 6, 3], "nchw-to-nhwc", lambda x: np.moveaxis(x, 1, 3)),
     ((3, 8, 6), ["N", 3, "H", "W"], "as-is", lambda x: x),
     ((3, 8, 6), None, "as-is", lambda x: x)],
)
def test_plan_layout(sample, dims, rule, ref):
    x = np.random.default_rng(0).standard_normal((2, *sample)).astype(np.float32)
    layout = plan_layout(sample, dims)
    assert layout.rule == rule
    out = layout.apply(x)
    np.testing.assert_array_equal(out, ref(x))
    assert out.flags.c_contiguous


def test_plan_layout_mismatch_is_one_clear_line():
    with pytest.raises(InvalidInputError) as err:
        plan_layout((3, 32, 32), ["N", 1, 28, 28], where="cifar.npz", input_name="input")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("cifar.npz: samples of shape 3x32x32 cannot feed model input 'input' of shape Nx1x28x28")


def test_normalizer_fit_and_apply_match_numpy():
    x = np.random.default_rng(1).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    n = Normalizer.fit(x)
    scaled = x.astype(np.float64) / 255.0
    assert n.scale == pytest.approx(1 / 255)
    assert n.mean[0] == pytest.approx(scaled.mean(), rel=1e-12)
    assert n.std[0] == pytest.approx(scaled.std(), rel=1e-12)
    np.testing.assert_allclose(n.apply(x), (scaled - scaled.mean()) / scaled.std(), rtol=1e-5, atol=1e-6)
    ident = Normalizer.identity(x).apply(x)
    np.testing.assert_allclose(ident, scaled, rtol=1e-6)


@pytest.mark.parametrize("axis", [1, -1])
def test_normalizer_per_channel(axis):
    x = np.random.default_rng(2).standard_normal((4, 3, 5, 5) if axis == 1 else (4, 5, 5, 3)).astype(np.float32)
    mean, std = [0.1, 0.2, 0.3], [0.5, 1.0, 2.0]
    n = Normalizer(mean, std, 1.0, channel_axis=axis)
    shape = (1, 3, 1, 1) if axis == 1 else (1, 1, 1, 3)
    np.testing.assert_allclose(n.apply(x), (x - np.reshape(mean, shape)) / np.reshape(std, shape), rtol=1e-6, atol=1e-7)
    with pytest.raises(InvalidInputError, match="3 mean / 3 std values given for 5 channel"):
        Normalizer(mean, std, 1.0, channel_axis=2).apply(x)


def test_batches_cover_every_sample_once():
    ds = ArrayDataset(np.arange(10)[:, None], np.arange(10))
    got = [b for b in batches(ds, 4, shuffle=True, seed=5)]
    assert [len(b[0]) for b in got] == [4, 4, 2]
    order = np.concatenate([b[1] for b in got])
    np.testing.assert_array_equal(order, np.random.default_rng(5).permutation(10))
    assert [len(b[0]) for b in batches(ds, 4, drop_last=True)] == [4, 4]
    with pytest.raises(InvalidInputError, match="batch size must be positive"):
        next(batches(ds, 0))
