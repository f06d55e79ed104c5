"""Reading CNTK v2 model files into plain Python values.

A CNTK 2.x model file is one serialized ``Dictionary``. Models whose tensors exceed
protobuf's 2 GB limit use a *large-file* layout instead: little-endian uint32 magic
``0x636e746b`` ("kntc"), uint32 size of the protobuf, the protobuf with every tensor left
empty, then the raw tensor data (little-endian float32/float64), one tensor after another
in the order the dictionary is traversed (vector order; dictionary keys in sorted order).

``read_model(path)`` returns the top-level dictionary with every ``DictionaryValue``
unwrapped: bools, ints, floats, strings, ``NDShape``, ``Axis``, lists, dicts and numpy
arrays (``NDArrayView``, already in NumPy axis order: CNTK's column-major dims reversed).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from portanet.converters.cntk.schema import DATA_TYPES, VALUE_TYPES, message_class
from portanet.errors import InvalidInputError, InvalidModelError

MAGIC = 0x636E746B
#: a UTF-16 "BCN" marker starts every legacy (v1, BrainScript) model
V1_MARKER = "BCN\0".encode("utf-16-le")
V1_MESSAGE = "CNTK v1 (BrainScript) models are not supported; load and re-save with CNTK 2.x"

#: dims at or above this are CNTK's special values (InferredDimension = -1, FreeDimension = -3)
_SPECIAL_DIM = 1 << 63
#: static_axis_idx at or above INT_MAX - 4 marks dynamic / "all axes" pseudo axes
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class NDShape:
    """A CNTK shape in CNTK's (column-major) order; ``None`` for inferred/free dims."""

    dims: tuple[int | None, ...]

    def numpy(self) -> tuple[int | None, ...]:
        """The same shape in NumPy/ONNX order."""
        return tuple(reversed(self.dims))


@dataclass(frozen=True)
class Axis:
    static_axis_idx: int
    name: str = ""
    is_ordered_dynamic_axis: bool = False

    @property
    def is_static(self) -> bool:
        return self.static_axis_idx < INT_MAX - 4


_TYPE_NAMES = {v: k for k, v in VALUE_TYPES.items()}
_DTYPE = {DATA_TYPES["Float"]: np.float32, DATA_TYPES["Double"]: np.float64,
          DATA_TYPES["Float16"]: np.float16, DATA_TYPES["Int8"]: np.int8, DATA_TYPES["Int16"]: np.int16}


class _Decoder:
    """Unwraps protobuf messages; collects tensors whose data lives after the protobuf."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.pending: list[tuple[dict[str, Any], str, np.dtype, tuple[int, ...]]] = []

    def dictionary(self, msg: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        # sorted keys: a deterministic traversal order (the large-file layout depends on it)
        for key in sorted(msg.data):
            out[key] = self.value(msg.data[key], out, key)
        return out

    def value(self, v: Any, parent: Any, key: Any) -> Any:
        t = v.value_type
        name = _TYPE_NAMES.get(t)
        if name is None:
            raise InvalidModelError(f"{self.where}: not a CNTK v2 model (DictionaryValue type {t} is unknown)")
        if name == "None":
            return None
        if name == "Bool":
            return bool(v.bool_value)
        if name == "Int":
            return int(v.int_value)
        if name == "SizeT":
            return int(v.size_t_value)
        if name == "Float":
            return float(v.float_value)
        if name == "Double":
            return float(v.double_value)
        if name == "String":
            return str(v.string_value)
        if name == "NDShape":
            return _shape(v.nd_shape_value)
        if name == "Axis":
            a = v.axis_value
            return Axis(int(a.static_axis_idx), str(a.name), bool(a.is_ordered_dynamic_axis))
        if name == "Vector":
            items: list[Any] = []
            for i, item in enumerate(v.vector_value.value):
                items.append(None)
                items[i] = self.value(item, items, i)
            return items
        if name == "Dictionary":
            return self.dictionary(v.dictionary_value)
        return self.array(v.nd_array_view_value, parent, key)

    def array(self, view: Any, parent: Any, key: Any) -> np.ndarray | None:
        dtype = _DTYPE.get(view.data_type)
        if dtype is None:
            raise InvalidModelError(f"{self.where}: tensor data type {view.data_type} is not supported")
        if view.storage_format != 0:
            raise InvalidModelError(f"{self.where}: sparse tensors (storage format {view.storage_format}) are not supported")
        shape = _shape(view.shape)
        if any(d is None for d in shape.dims):
            raise InvalidModelError(f"{self.where}: tensor with an inferred dimension {shape.dims}")
        np_shape = tuple(int(d) for d in shape.numpy())  # type: ignore[arg-type]
        size = math.prod(np_shape)  # exact: a corrupt shape must not wrap around int64
        if math.prod(d for d in np_shape if d) >= 2**60:
            raise InvalidModelError(f"{self.where}: tensor declares shape {list(shape.dims)}, larger than any array can be")
        which = view.WhichOneof("values")
        if which == "float_values":
            data = np.asarray(view.float_values.value, dtype=np.float32)
        elif which == "double_values":
            data = np.asarray(view.double_values.value, dtype=np.float64)
        elif which == "bytes_value":
            data = np.frombuffer(view.bytes_value.value, dtype=np.int8)
        elif which == "sint32_values":
            data = np.asarray(view.sint32_values.value, dtype=np.int32)
        else:
            data = np.zeros(0, np.float32)
        if data.size != size:
            if data.size == 0 and size > 0:
                # large-file layout: the values follow the protobuf
                self.pending.append((parent, key, np.dtype(dtype), np_shape))
                return None
            raise InvalidModelError(
                f"{self.where}: tensor of shape {list(shape.dims)} needs {size} values, the file holds {data.size}"
            )
        # Float16 is stored widened to float32, Int16 as sint32: restore the declared type
        # CNTK stores column-major: reversing the dims gives the row-major (NumPy) layout
        return data.astype(dtype, copy=False).reshape(np_shape)


def _shape(msg: Any) -> NDShape:
    return NDShape(tuple(None if d >= _SPECIAL_DIM else int(d) for d in msg.shape_dim))


def read_bytes(data: bytes, where: str = "<bytes>") -> dict[str, Any]:
    """Decode a CNTK v2 model from ``data`` (normal or large-file layout)."""
    if data.startswith(V1_MARKER):
        raise InvalidModelError(f"{where}: {V1_MESSAGE}")
    if not data:
        raise InvalidModelError(f"{where}: empty file, expected a CNTK v2 model")
    raw_tail = b""
    body = data
    if len(data) >= 8 and struct.unpack_from("<I", data, 0)[0] == MAGIC:
        (size,) = struct.unpack_from("<I", data, 4)
        if 8 + size > len(data):
            raise InvalidModelError(
                f"{where}: truncated CNTK model: header announces {size} bytes of protobuf, the file has {len(data) - 8}"
            )
        body, raw_tail = data[8 : 8 + size], data[8 + size :]
    try:
        msg = message_class("Dictionary").FromString(body)
    except DecodeError as exc:
        raise InvalidModelError(f"{where}: not a CNTK v2 model or truncated (protobuf decode failed: {exc})") from exc
    dec = _Decoder(where)
    top = dec.dictionary(msg)
    _fill_pending(dec, raw_tail, where)
    _check_composite(top, where)
    return top


def _fill_pending(dec: _Decoder, tail: bytes, where: str) -> None:
    offset = 0
    for parent, key, dtype, shape in dec.pending:
        # raw data is written with 4-byte (float) or 8-byte (double) little-endian words
        le = dtype.newbyteorder("<")
        n = math.prod(shape)
        nbytes = n * le.itemsize
        if offset + nbytes > len(tail):
            raise InvalidModelError(
                f"{where}: truncated CNTK model: tensor data ends after {len(tail)} bytes, {offset + nbytes} needed"
            )
        parent[key] = np.frombuffer(tail, dtype=le, count=n, offset=offset).astype(dtype).reshape(shape)
        offset += nbytes
    if offset != len(tail):
        raise InvalidModelError(f"{where}: {len(tail) - offset} unexpected bytes after the CNTK model")


_REQUIRED = {"type": str, "root": str, "primitive_functions": list, "inputs": list}


def _check_composite(top: dict[str, Any], where: str) -> None:
    """A saved CNTK function is a dictionary with type 'CompositeFunction' and its graph."""
    if top.get("type") != "CompositeFunction":
        got = top.get("type")
        raise InvalidModelError(
            f"{where}: not a CNTK v2 model: expected a Dictionary with type 'CompositeFunction', "
            f"received {'no type' if got is None else repr(got)} (keys: {', '.join(sorted(top)) or 'none'})"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(top.get(key), kind):
            raise InvalidModelError(
                f"{where}: truncated or corrupt CNTK model: '{key}' is missing or not a {kind.__name__}"
            )


def read_model(path: str | Path) -> dict[str, Any]:
    """Read a CNTK v2 model file (``.model``, ``.dnn``, ``.cmf``) into plain Python values."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: no such file")
    return read_bytes(p.read_bytes(), str(p))


def sniff(path: Path) -> bool:
    """Cheap content check: does ``path`` start like a CNTK model (v2, large v2 or v1)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    if head.startswith(V1_MARKER):
        return True
    if len(head) >= 4 and struct.unpack_from("<I", head, 0)[0] == MAGIC:
        return True
    return _looks_like_dictionary(head)


#: keys CNTK writes at the top level of a saved function
_TOP_KEYS = {b"version", b"type", b"uid", b"root", b"name", b"inputs", b"primitive_functions", b"state"}


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while i < len(buf) and shift < 64:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
    return -1, i


def _looks_like_dictionary(head: bytes) -> bool:
    """A serialized Dictionary: an optional ``version`` varint (field 1, tag 0x08), then a
    ``data`` map entry (field 2, tag 0x12) whose key (tag 0x0a) is a CNTK top-level key."""
    i = 0
    if head[:1] == b"\x08":
        _, i = _read_varint(head, 1)
    if head[i : i + 1] != b"\x12":
        return False
    _, i = _read_varint(head, i + 1)
    if head[i : i + 1] != b"\x0a":
        return False
    n, i = _read_varint(head, i + 1)
    return 0 < n <= 32 and head[i : i + n] in _TOP_KEYS
