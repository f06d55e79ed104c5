"""IDX reader/writer and MNIST-family directories.

Reference bytes are produced here with ``struct`` (the format as published with MNIST), not
with portanet's writer, and the embedded data set is checked against a plain byte parse.
"""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest

from portanet.data import DEFAULT_DATA, load_data, read_idx, write_idx
from portanet.data.idx import find_idx_files
from portanet.errors import InvalidInputError


def _idx_bytes(arr: np.ndarray, code: int, be_dtype: str) -> bytes:
    """IDX written independently: magic 0,0,type,ndim; big-endian uint32 dims; big-endian data."""
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(be_dtype).tobytes()


@pytest.mark.parametrize(
    "dtype,code,be",
    [(np.uint8, 0x08, "u1"), (np.int8, 0x09, "i1"), (np.int16, 0x0B, ">i2"), (np.int32, 0x0C, ">i4"),
     (np.float32, 0x0D, ">f4"), (np.float64, 0x0E, ">f8")],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_all_types(tmp_path, dtype, code, be, gz):
    rng = np.random.default_rng(code)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    raw = _idx_bytes(arr, code, be)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_write_idx_matches_reference_bytes(tmp_path, dtype):
    arr = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    code, be = {np.uint8: (0x08, "u1"), np.int16: (0x0B, ">i2"), np.float32: (0x0D, ">f4")}[dtype]
    out = write_idx(tmp_path / "x.idx", arr)
    assert out.read_bytes() == _idx_bytes(arr, code, be)
    gz = write_idx(tmp_path / "x.idx.gz", arr)
    assert gzip.decompress(gz.read_bytes()) == _idx_bytes(arr, code, be)


def test_embedded_mnist_matches_plain_byte_parse():
    splits = load_data()  # the default: the embedded subset
    assert splits.format == "idx"
    raw = gzip.decompress((DEFAULT_DATA / "train-images-idx3-ubyte.gz").read_bytes())
    n, h, w = struct.unpack(">III", raw[4:16])
    assert (n, h, w) == (8000, 28, 28)
    np.testing.assert_array_equal(splits.train.x, np.frombuffer(raw[16:], np.uint8).reshape(n, h, w))
    labels = gzip.decompress((DEFAULT_DATA / "t10k-labels-idx1-ubyte.gz").read_bytes())
    np.testing.assert_array_equal(splits.test.y, np.frombuffer(labels[8:], np.uint8))
    assert splits.test.x.shape == (2000, 28, 28) and splits.train.y.dtype == np.int64
    assert set(np.unique(splits.train.y)) == set(range(10))
    assert (DEFAULT_DATA / "LICENSE").is_file()


def test_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(InvalidInputError, match=r"bad\.idx: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(_idx_bytes(np.zeros((10, 2, 2), np.uint8), 0x08, "u1")[:-3])
    with pytest.raises(InvalidInputError, match=r"short\.idx: IDX header promises \(10, 2, 2\)"):
        read_idx(short)
    unknown = tmp_path / "unknown.idx"
    unknown.write_bytes(b"\0\0\x07\x01" + struct.pack(">I", 1) + b"\0")
    with pytest.raises(InvalidInputError, match="unknown IDX type code 0x07"):
        read_idx(unknown)


def test_missing_files_are_named(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    shutil.copy(DEFAULT_DATA / "train-images-idx3-ubyte.gz", d)
    shutil.copy(DEFAULT_DATA / "train-labels-idx1-ubyte.gz", d)
    with pytest.raises(InvalidInputError) as err:
        load_data(d)
    msg = str(err.value)
    assert "\n" not in msg and str(d) in msg
    assert "test images (t10k-images-idx3-ubyte[.gz])" in msg and "test labels" in msg
    assert "train images" not in msg


def test_missing_directory_and_unknown_format(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file or directory"):
        load_data(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InvalidInputError, match="not a dataset portanet can read"):
        load_data(tmp_path)


def test_count_mismatch_between_images_and_labels(tmp_path):
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", np.zeros((5, 4, 4), np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.zeros(5 if split == "train" else 4, np.uint8))
    with pytest.raises(InvalidInputError, match="holds 5 images but t10k-labels-idx1-ubyte holds 4 labels"):
        load_data(tmp_path)


def test_other_family_names_and_plain_files(tmp_path):
    # EMNIST-style names, uncompressed; the same file also present gzipped is not a conflict
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (6, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 26, 6).astype(np.uint8)
    for split in ("train", "test"):
        write_idx(tmp_path / f"emnist-letters-{split}-images-idx3-ubyte", x)
        write_idx(tmp_path / f"emnist-letters-{split}-labels-idx1-ubyte", y)
    write_idx(tmp_path / "emnist-letters-train-images-idx3-ubyte.gz", x)
    found = find_idx_files(tmp_path)
    assert found[("train", "images")].name == "emnist-letters-train-images-idx3-ubyte"
    s = load_data(tmp_path)
    np.testing.assert_array_equal(s.test.x, x)
    np.testing.assert_array_equal(s.train.y, y.astype(np.int64))
