"""A numpy-only reader for MXNet ``.params`` files (``mx.nd.save`` containers).

Layout (all little-endian)::

    u64 list magic 0x112, u64 reserved, u64 n_arrays
    n_arrays x NDArray record
    u64 n_names, n_names x (u64 byte_len, utf-8 bytes)

Each NDArray record starts with a u32 that is either a version magic or, in files written
by MXNet 0.10 and earlier, the array's rank itself:

* ``0xF993FACA`` V3 (numpy-shape semantics): i32 stype, shape (i32 ndim, i64 dims;
  ndim -1 = none, 0 = a real scalar), i32 dev_type, i32 dev_id, i32 type flag, data
* ``0xF993FAC9`` V2: the same, but ndim 0 means "none array" and the record ends there
* ``0xF993FAC8`` V1: no stype, then shape, context, type flag and data as V2
* otherwise, legacy: the u32 is ndim, then ndim u32 dims, context, type flag and data

Sparse storage (stype 1 row_sparse, 2 csr) is refused with a clear error. The context is
ignored (GPU records load as host data). Every size is checked against the bytes left in
the file before anything is allocated, so a truncated or corrupt file fails with
``InvalidModelError`` instead of a huge allocation. Arrays are views into the file's bytes
(no second copy of the weights); they are writable when read from a file.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portanet.errors import InvalidModelError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA

#: mshadow TypeFlag -> numpy dtype (flags 0-7 are the ones MXNet 1.9 writes from Python)
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("<f8"),
    2: np.dtype("<f2"),
    3: np.dtype("u1"),
    4: np.dtype("<i4"),
    5: np.dtype("i1"),
    6: np.dtype("<i8"),
    7: np.dtype("bool"),
    8: np.dtype("<i2"),
    9: np.dtype("<u2"),
    10: np.dtype("<u4"),
    11: np.dtype("<u8"),
}
_STYPES = {1: "row_sparse", 2: "csr"}
#: no MXNet array has more dims than this; a larger rank means a corrupt record
MAX_NDIM = 32


@dataclass
class NDArrayList:
    """The contents of one ``mx.nd.save`` file."""

    #: the arrays in file order (None for MXNet "none" arrays)
    arrays: list[np.ndarray | None]
    #: the names in file order; empty for an unnamed list
    names: list[str]
    #: record format of each array: "v3", "v2", "v1" or "legacy"
    versions: list[str]

    def as_dict(self) -> dict[str, np.ndarray]:
        """Name -> array for a named list (none arrays are left out)."""
        return {n: a for n, a in zip(self.names, self.arrays) if a is not None}


class _Reader:
    """Bounds-checked little-endian reads over a bytes buffer."""

    def __init__(self, data: bytes | memoryview, where: str) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.where = where

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left:
            raise InvalidModelError(
                f"{self.where}: truncated or corrupt .params file: {what} needs {n} bytes at offset "
                f"{self.pos}, only {self.left} left"
            )

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        self.need(size, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return out

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def i32(self, what: str) -> int:
        return self.unpack("<i", what)[0]

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out


def read_ndarray_list(
    path: str | os.PathLike[str] | None = None, *, data: bytes | bytearray | None = None
) -> NDArrayList:
    """Read every array and name of an ``mx.nd.save`` file (or of ``data`` bytes)."""
    where = str(path) if path is not None else "<bytes>"
    if data is None:
        if path is None:
            raise ValueError("read_ndarray_list needs a path or data")
        p = Path(path)
        if not p.is_file():
            raise InvalidModelError(f"{p}: no such .params file")
        # a bytearray filled in place: the arrays are writable views, with no second copy
        data = bytearray(p.stat().st_size)
        with open(p, "rb") as f:
            f.readinto(data)
    r = _Reader(data, where)
    if r.left < 24:
        raise InvalidModelError(f"{where}: not an MXNet .params file ({len(r.buf)} bytes, the header alone is 24)")
    magic = r.u64("list magic")
    if magic != LIST_MAGIC:
        raise InvalidModelError(
            f"{where}: not an MXNet .params file: expected list magic 0x112, received {magic:#x}"
        )
    r.u64("reserved")
    n_arrays = r.u64("array count")
    # the smallest possible record (a legacy or V1 "none" array) takes 4 bytes, plus the name count
    if n_arrays * 4 + 8 > r.left:
        raise InvalidModelError(
            f"{where}: corrupt .params file: declares {n_arrays} arrays but only {r.left} bytes follow"
        )
    arrays: list[np.ndarray | None] = []
    versions: list[str] = []
    for i in range(n_arrays):
        arr, version = _read_record(r, i)
        arrays.append(arr)
        versions.append(version)
    n_names = r.u64("name count")
    if n_names not in (0, n_arrays):
        raise InvalidModelError(f"{where}: corrupt .params file: {n_arrays} arrays but {n_names} names")
    names: list[str] = []
    for i in range(n_names):
        length = r.u64(f"length of name {i}")
        raw = r.take(length, f"name {i}")
        try:
            names.append(bytes(raw).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidModelError(f"{where}: corrupt .params file: name {i} is not UTF-8") from exc
    if r.left:
        raise InvalidModelError(f"{where}: corrupt .params file: {r.left} unexpected bytes after the last name")
    return NDArrayList(arrays, names, versions)


def _read_shape(r: _Reader, what: str, *, dim_fmt: str, ndim: int | None = None) -> list[int]:
    if ndim is None:
        ndim = r.i32(f"{what} rank")
    if ndim < 0 or ndim > MAX_NDIM:
        raise InvalidModelError(f"{r.where}: corrupt .params file: {what} has rank {ndim} (expected 0..{MAX_NDIM})")
    size = struct.calcsize(dim_fmt)
    r.need(ndim * size, f"{what} dims")
    dims = list(struct.unpack_from("<" + dim_fmt * ndim, r.buf, r.pos))
    r.pos += ndim * size
    if any(d < 0 for d in dims):
        raise InvalidModelError(f"{r.where}: corrupt .params file: {what} has negative dims {dims}")
    return dims


def _read_record(r: _Reader, index: int) -> tuple[np.ndarray | None, str]:
    what = f"array {index}"
    head = r.u32(f"{what} header")
    if head == V3_MAGIC or head == V2_MAGIC:
        version = "v3" if head == V3_MAGIC else "v2"
        stype = r.i32(f"{what} storage type")
        if stype != 0:
            kind = _STYPES.get(stype, f"storage type {stype}")
            raise InvalidModelError(
                f"{r.where}: {what} uses {kind} (sparse) storage; only dense arrays are supported "
                f"(convert it with .tostype('default') in MXNet and save again)"
            )
        ndim = r.i32(f"{what} rank")
        if version == "v3" and ndim == -1:
            return None, version
        if version == "v2" and ndim == 0:
            return None, version
        shape = _read_shape(r, what, dim_fmt="q", ndim=ndim)
    elif head == V1_MAGIC:
        version = "v1"
        shape = _read_shape(r, what, dim_fmt="q")
        if not shape:
            return None, version
    else:
        # legacy (<= 0.10): the word just read is the rank, dims are u32
        version = "legacy"
        shape = _read_shape(r, what, dim_fmt="I", ndim=head)
        if not shape:
            return None, version
    r.i32(f"{what} device type")  # cpu, gpu, pinned: all load as host data
    r.i32(f"{what} device id")
    flag = r.i32(f"{what} dtype")
    if flag not in DTYPES:
        raise InvalidModelError(
            f"{r.where}: {what} has dtype flag {flag}; supported flags are {sorted(DTYPES)} "
            "(bfloat16 is not supported)"
        )
    dtype = DTYPES[flag]
    # exact integer arithmetic: a corrupt shape must not wrap around int64 (numpy's prod does)
    count = math.prod(shape)
    if math.prod(d for d in shape if d) * dtype.itemsize >= 2**62:
        raise InvalidModelError(
            f"{r.where}: corrupt .params file: {what} declares shape {shape}, larger than any array can be"
        )
    nbytes = count * dtype.itemsize
    raw = r.take(nbytes, f"{what} data ({shape} {dtype.name})")
    arr = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    if not arr.flags.aligned:  # records are packed; consumers may need natural alignment
        arr = arr.copy()
    return arr, version


def split_prefix(name: str) -> tuple[str, str]:
    """'arg:conv0_weight' -> ('arg', 'conv0_weight'); unprefixed names get kind ''."""
    for kind in ("arg", "aux"):
        if name.startswith(kind + ":"):
            return kind, name[len(kind) + 1 :]
    return "", name


def load_params(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a checkpoint's ``.params`` file as variable name -> array.

    ``arg:``/``aux:`` prefixes are removed (unprefixed names, as ``ParameterDict.save``
    writes them, are kept as they are). An unnamed list cannot be matched to a symbol and
    is refused.
    """
    contents = read_ndarray_list(path)
    if not contents.names and contents.arrays:
        raise InvalidModelError(
            f"{path}: the .params file holds {len(contents.arrays)} unnamed arrays (mx.nd.save of a list); "
            "a checkpoint needs named arrays (arg:<name> / aux:<name>)"
        )
    out: dict[str, np.ndarray] = {}
    for name, arr in contents.as_dict().items():
        _kind, var = split_prefix(name)
        if var in out:
            raise InvalidModelError(f"{path}: variable '{var}' is stored twice (as arg: and aux:)")
        out[var] = arr
    return out
