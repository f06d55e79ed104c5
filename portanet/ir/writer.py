"""Writing an ONNX file without building it in memory twice.

``onnx.save`` serializes the whole ``ModelProto`` into one bytes object, after onnx_ir has
already copied every weight into the proto: for a 100 MB model that is two extra 100 MB copies
and most of the time of a save. Here the proto is built with the large weights left out
(``serialize_head``: an external-data placeholder stands in for each), the caller rewrites that
small proto as it needs, and ``write`` streams the file: the proto without its initializers,
then every initializer, in order, each as its own ``graph { initializer { ... } }`` record
with the raw bytes written straight from the NumPy array.

Protocol Buffers merge repeated occurrences of a message field when parsing (the records of
``graph`` merge into one graph, their ``initializer`` entries are appended in file order), so
every reader sees the same model ``onnx.save`` would write.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

#: placeholder location marking a weight whose bytes ``write`` streams
STREAMED = "<portanet-streamed>"
#: weights smaller than this stay inside the proto
MIN_BYTES = 4096
#: element types whose ONNX raw data is the little-endian NumPy buffer as is
_PLAIN = {
    ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BOOL,
    ir.DataType.INT8, ir.DataType.INT16, ir.DataType.INT32, ir.DataType.INT64,
    ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32, ir.DataType.UINT64,
}


def _plain_array(tensor: Any) -> np.ndarray | None:
    """The tensor's C-contiguous little-endian NumPy array when its raw data is exactly that."""
    if sys.byteorder != "little" or type(tensor) is not ir.Tensor or tensor.dtype not in _PLAIN:
        return None
    arr = tensor.raw
    if not isinstance(arr, np.ndarray) or arr.nbytes < MIN_BYTES or arr.dtype != tensor.dtype.numpy():
        return None
    if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        return None
    return arr


def serialize_head(model: ir.Model) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``ir.serde.serialize_model(model)`` with each large main-graph weight replaced by a
    placeholder (no data), and those weights' arrays by name. The IR is left as it was."""
    arrays: dict[str, np.ndarray] = {}
    swapped: list[tuple[ir.Value, Any]] = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        arr = _plain_array(tensor)
        if arr is None or not value.name:
            continue
        swapped.append((value, tensor))
        arrays[value.name] = arr
        value.const_value = ir.ExternalTensor(
            STREAMED, 0, arr.nbytes, tensor.dtype, shape=tensor.shape, name=value.name,
            doc_string=tensor.doc_string, metadata_props=dict(tensor.metadata_props))
    try:
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    return proto, arrays


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint (negative numbers as their 64-bit two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(message: Any, field: str) -> bytes:
    """The tag of a length-delimited field (wire type 2)."""
    return varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


def _is_streamed(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == STREAMED for e in tensor.external_data)


def write(proto: onnx.ModelProto, arrays: dict[str, np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write ``proto`` (from ``serialize_head``) to ``path`` with the streamed weights' bytes."""
    head = onnx.ModelProto()
    head.CopyFrom(proto)
    del head.graph.initializer[:]
    graph_key, init_key = _key(onnx.ModelProto, "graph"), _key(onnx.GraphProto, "initializer")
    raw_key = _key(onnx.TensorProto, "raw_data")
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        for tensor in proto.graph.initializer:
            arr = arrays.get(tensor.name) if _is_streamed(tensor) else None
            if arr is None:
                body = tensor.SerializeToString()
                record = init_key + varint(len(body)) + body
                f.write(graph_key + varint(len(record)) + record)
                continue
            header = onnx.TensorProto()
            header.CopyFrom(tensor)
            header.ClearField("external_data")
            header.ClearField("data_location")
            prefix = header.SerializeToString() + raw_key + varint(arr.nbytes)
            size = len(prefix) + arr.nbytes  # the TensorProto
            inner = init_key + varint(size)  # GraphProto.initializer
            f.write(graph_key + varint(len(inner) + size) + inner + prefix)
            f.write(memoryview(arr).cast("B"))
