"""The numpy-only .params reader: files mxnet 1.9.1 writes (every dtype it writes, V2 and
V3 records, named and unnamed lists, sparse arrays), and hand-built byte streams for the
layouts mxnet 1.9 no longer writes (V1 records of 0.11, the pre-0.11 legacy record, GPU
context records). The hand-built streams follow the checkpoint format description
(little-endian list magic 0x112, record magics 0xF993FAC8/9/A, mshadow type flags)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from portanet.converters.mxnet.params import (
    V1_MAGIC,
    V2_MAGIC,
    load_params,
    read_ndarray_list,
)
from portanet.errors import InvalidModelError

FLAGS = {np.dtype("float32"): 0, np.dtype("float64"): 1, np.dtype("float16"): 2, np.dtype("uint8"): 3,
         np.dtype("int32"): 4, np.dtype("int8"): 5, np.dtype("int64"): 6, np.dtype("bool"): 7}


def _container(records: list[bytes], names: list[str]) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(records)) + b"".join(records)
    out += struct.pack("<Q", len(names))
    for n in names:
        raw = n.encode()
        out += struct.pack("<Q", len(raw)) + raw
    return out


def _v2(arr: np.ndarray, dev_type: int = 1, dims: tuple[int, ...] | None = None) -> bytes:
    dims = arr.shape if dims is None else dims
    return (struct.pack("<Iii", V2_MAGIC, 0, len(dims)) + struct.pack(f"<{len(dims)}q", *dims)
            + struct.pack("<iii", dev_type, 0, FLAGS[arr.dtype]) + arr.tobytes())


def _v1(arr: np.ndarray) -> bytes:
    return (struct.pack("<Ii", V1_MAGIC, arr.ndim) + struct.pack(f"<{arr.ndim}q", *arr.shape)
            + struct.pack("<iii", 1, 0, FLAGS[arr.dtype]) + arr.tobytes())


def _legacy(arr: np.ndarray) -> bytes:
    # no magic: the first u32 is the rank, dims are u32
    return (struct.pack("<I", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
            + struct.pack("<iii", 1, 0, FLAGS[arr.dtype]) + arr.tobytes())


# -- files written by mxnet ------------------------------------------------------------------
@pytest.mark.mxnet
def test_every_dtype_mxnet_writes(mx_refs):
    contents = read_ndarray_list(mx_refs / "dtypes_v2.params")
    with np.load(mx_refs / "dtypes_v2-expected.npz") as z:
        expected = {k.replace("__", ":"): z[k] for k in z.files}
    assert set(contents.versions) == {"v2"}
    got = contents.as_dict()
    assert set(got) == set(expected)
    for name, exp in expected.items():
        assert got[name].dtype == exp.dtype, name
        assert got[name].shape == exp.shape, name
        np.testing.assert_array_equal(got[name], exp)
    dtypes = {got[f"arg:w_{d}"].dtype.name for d in
              ("float32", "float64", "float16", "uint8", "int8", "int32", "int64", "bool")}
    assert len(dtypes) == 8


@pytest.mark.mxnet
def test_prefixes_are_stripped_and_plain_names_kept(mx_refs):
    params = load_params(mx_refs / "dtypes_v2.params")
    assert "w_float32" in params and "bn_moving_var" in params and "plain_name" in params
    assert not any(":" in k for k in params)


@pytest.mark.mxnet
def test_unnamed_list(mx_refs):
    contents = read_ndarray_list(mx_refs / "list_v2.params")
    assert contents.names == []
    np.testing.assert_array_equal(contents.arrays[0], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert contents.arrays[1].dtype == np.int32
    with pytest.raises(InvalidModelError, match="unnamed"):
        load_params(mx_refs / "list_v2.params")


@pytest.mark.mxnet
def test_v3_numpy_shape_records(mx_refs):
    contents = read_ndarray_list(mx_refs / "np_shape_v3.params")
    assert set(contents.versions) == {"v3"}
    got = contents.as_dict()
    with np.load(mx_refs / "np_shape_v3-expected.npz") as z:
        for k in z.files:
            assert got[k].shape == z[k].shape, k
            np.testing.assert_array_equal(got[k], z[k])
    assert got["scalar"].shape == () and got["empty"].shape == (2, 0, 3)


@pytest.mark.mxnet
@pytest.mark.parametrize(("file", "kind"), [("row_sparse.params", "row_sparse"), ("csr.params", "csr")])
def test_sparse_is_refused_clearly(mx_refs, file, kind):
    with pytest.raises(InvalidModelError, match=f"{kind}.*only dense"):
        read_ndarray_list(mx_refs / file)


@pytest.mark.mxnet
def test_truncated_mxnet_file(mx_refs, tmp_path):
    data = (mx_refs / "dtypes_v2.params").read_bytes()
    for cut in (10, 40, len(data) // 2, len(data) - 3):
        p = tmp_path / f"cut{cut}.params"
        p.write_bytes(data[:cut])
        with pytest.raises(InvalidModelError, match=str(p)):
            read_ndarray_list(p)


# -- hand-built layouts ------------------------------------------------------------------------
def test_v1_and_legacy_records():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.array([[1, -2], [3, 4]], dtype=np.int64)
    c = np.linspace(0, 1, 5).astype(np.float16)
    data = _container([_v1(a), _legacy(b), _legacy(c)], ["arg:a", "aux:b", "c"])
    contents = read_ndarray_list(data=data)
    assert contents.versions == ["v1", "legacy", "legacy"]
    got = contents.as_dict()
    np.testing.assert_array_equal(got["arg:a"], a)
    np.testing.assert_array_equal(got["aux:b"], b)
    np.testing.assert_array_equal(got["c"], c)
    assert got["c"].dtype == np.float16


def test_gpu_context_record_loads_as_host_data():
    a = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    contents = read_ndarray_list(data=_container([_v2(a, dev_type=2)], ["arg:w"]))
    np.testing.assert_array_equal(contents.as_dict()["arg:w"], a)


def test_declared_size_larger_than_file_fails_before_allocating():
    # a record claiming 2**40 float32 values (4 TiB) in a file of a few bytes
    huge = _v2(np.zeros(1, np.float32), dims=(1 << 40,))
    with pytest.raises(InvalidModelError, match="needs 4398046511104 bytes"):
        read_ndarray_list(data=_container([huge], ["arg:w"]))


def test_huge_array_count_fails_early():
    with pytest.raises(InvalidModelError, match="declares 1152921504606846976 arrays"):
        read_ndarray_list(data=struct.pack("<QQQ", 0x112, 0, 1 << 60) + b"\0" * 16)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "header alone"),
        (struct.pack("<QQQ", 0x113, 0, 0) + b"\0" * 8, "expected list magic 0x112"),
        (_container([_v2(np.zeros(2, np.float32))], ["a"]) + b"xx", "unexpected bytes"),
        (_container([_v2(np.zeros(2, np.float32))], ["a", "b"]), "1 arrays but 2 names"),
        (_container([_v2(np.zeros(2, np.float32))], ["a"])[:-3], "truncated"),
    ],
)
def test_corrupt_containers(data, message):
    with pytest.raises(InvalidModelError, match=message):
        read_ndarray_list(data=data)


def test_unknown_dtype_flag():
    rec = bytearray(_v2(np.zeros(2, np.float32)))
    struct.pack_into("<i", rec, len(rec) - 8 - 4, 12)  # bfloat16
    with pytest.raises(InvalidModelError, match="dtype flag 12"):
        read_ndarray_list(data=_container([bytes(rec)], ["a"]))


def test_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match="no such .params file"):
        read_ndarray_list(tmp_path / "nope.params")
