"""A CNTK v2 model writer: serializes small function graphs the way CNTK 2.x's
``Function.save`` does, so portanet's CNTK importer can be tested without CNTK.

Arrays are given in NumPy order; the writer stores CNTK's column-major dims (reversed) with
the row-major data unchanged, which is exactly CNTK's layout. Attribute values are typed
like CNTK's ``DictionaryValue``: ``bool`` -> Bool, ``int`` -> SizeT (``Int(n)`` for Int),
``float`` -> Double (``Float(x)`` for Float), ``str`` -> String, ``NDShape``, ``Axis``,
lists -> Vector, dicts -> Dictionary, ``np.ndarray`` -> NDArrayView.

    w = CntkWriter()
    x = w.input((3, 16, 16))
    W = w.parameter(weights)                    # (Cout, Cin, kH, kW)
    y = w.op("Convolution", [W, x], {"strides": NDShape((2, 2, 3)), ...})
    w.save(path, y)
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from portanet.converters.cntk.graph import OP_NUMBERS
from portanet.converters.cntk.reader import MAGIC, Axis, NDShape
from portanet.converters.cntk.schema import DATA_TYPES, VALUE_TYPES, message_class

# CNTK's own version numbers at 2.7
DICT_VERSION = 2
COMPOSITE_VERSION = 3
FUNCTION_VERSION = 20
VARIABLE_VERSION = 1
INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Int:
    """A DictionaryValue of type Int (signed 32-bit)."""

    value: int


@dataclass(frozen=True)
class Float:
    """A DictionaryValue of type Float (32-bit)."""

    value: float


def shape(*cntk_dims: int) -> NDShape:
    """An NDShape attribute, dims in CNTK order."""
    return NDShape(tuple(int(d) for d in cntk_dims))


def axis(idx: int) -> Axis:
    """A static axis, index in CNTK order (Python's axis ``i`` is ``axis(-i - 1)``)."""
    return Axis(idx, f"staticAxisIdx={idx}", True)


BATCH_AXIS = Axis(INT_MAX, "defaultBatchAxis", False)
SEQUENCE_AXIS = Axis(INT_MAX, "defaultDynamicAxis", True)
ALL_STATIC_AXES = Axis(INT_MAX - 1, "AllStaticAxes", False)


class _Encoder:
    """Python values -> CNTK.proto messages; in large mode tensors go after the protobuf."""

    def __init__(self, large: bool) -> None:
        self.large = large
        self.tail: list[bytes] = []

    def value(self, v: Any, msg: Any) -> None:
        msg.version = DICT_VERSION
        if v is None:
            msg.value_type = VALUE_TYPES["None"]
        elif isinstance(v, bool | np.bool_):
            msg.value_type = VALUE_TYPES["Bool"]
            msg.bool_value = bool(v)
        elif isinstance(v, Int):
            msg.value_type = VALUE_TYPES["Int"]
            msg.int_value = int(v.value)
        elif isinstance(v, int | np.integer):
            msg.value_type = VALUE_TYPES["SizeT"]
            msg.size_t_value = int(v)
        elif isinstance(v, Float):
            msg.value_type = VALUE_TYPES["Float"]
            msg.float_value = float(v.value)
        elif isinstance(v, float):
            msg.value_type = VALUE_TYPES["Double"]
            msg.double_value = v
        elif isinstance(v, str):
            msg.value_type = VALUE_TYPES["String"]
            msg.string_value = v
        elif isinstance(v, NDShape):
            msg.value_type = VALUE_TYPES["NDShape"]
            msg.nd_shape_value.shape_dim.extend(int(d) for d in v.dims)
        elif isinstance(v, Axis):
            msg.value_type = VALUE_TYPES["Axis"]
            msg.axis_value.static_axis_idx = v.static_axis_idx
            msg.axis_value.name = v.name
            msg.axis_value.is_ordered_dynamic_axis = v.is_ordered_dynamic_axis
        elif isinstance(v, list | tuple):
            msg.value_type = VALUE_TYPES["Vector"]
            for item in v:
                self.value(item, msg.vector_value.value.add())
        elif isinstance(v, dict):
            msg.value_type = VALUE_TYPES["Dictionary"]
            self.dictionary(v, msg.dictionary_value)
        elif isinstance(v, np.ndarray):
            msg.value_type = VALUE_TYPES["NDArrayView"]
            self.array(v, msg.nd_array_view_value)
        else:
            raise TypeError(f"cannot encode {type(v).__name__} as a CNTK DictionaryValue")

    def dictionary(self, d: dict[str, Any], msg: Any) -> None:
        msg.version = DICT_VERSION
        # sorted keys: the traversal order the large-file layout relies on (see the reader)
        for k in sorted(d):
            self.value(d[k], msg.data[k])

    def array(self, a: np.ndarray, msg: Any) -> None:
        if a.dtype == np.float64:
            msg.data_type = DATA_TYPES["Double"]
        else:
            a = a.astype(np.float32)
            msg.data_type = DATA_TYPES["Float"]
        msg.storage_format = 0
        msg.shape.shape_dim.extend(reversed(a.shape))  # CNTK's column-major dims
        flat = np.ascontiguousarray(a).ravel()
        if self.large:
            self.tail.append(flat.astype(flat.dtype.newbyteorder("<")).tobytes())
        elif a.dtype == np.float64:
            msg.double_values.value.extend(flat.tolist())
        else:
            msg.float_values.value.extend(flat.tolist())


def encode(top: dict[str, Any], *, large: bool = False) -> bytes:
    """Serialize a model dictionary; ``large`` writes the >2 GB layout (header + raw tensors)."""
    enc = _Encoder(large)
    msg = message_class("Dictionary")()
    enc.dictionary(top, msg)
    body = msg.SerializeToString()
    if not large:
        return body
    return struct.pack("<II", MAGIC, len(body)) + body + b"".join(enc.tail)


class CntkWriter:
    """Builds a CNTK composite function graph and saves it as a CNTK v2 model file."""

    def __init__(self) -> None:
        self._n = 0
        self.variables: list[dict[str, Any]] = []
        self.functions: list[dict[str, Any]] = []
        self._block_stack: list[list[str]] = []

    def _uid(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def _var(self, prefix: str, kind: int, np_shape: Sequence[int], name: str, *, value: np.ndarray | None = None,
             dynamic: Sequence[Axis] = ()) -> str:
        uid = self._uid(prefix)
        d: dict[str, Any] = {
            "version": VARIABLE_VERSION, "type": "Variable", "uid": uid, "kind": kind,
            "data_type": DATA_TYPES["Float"], "dynamic_axis": list(dynamic), "is_sparse": False,
            "needs_gradient": kind == 2, "shape": NDShape(tuple(reversed([int(s) for s in np_shape]))),
        }
        if name:
            d["name"] = name
        if value is not None:
            d["value"] = value
        self.variables.append(d)
        return uid

    def input(self, np_shape: Sequence[int], name: str = "input", *, sequence: bool | str = False) -> str:
        """An Input variable with the batch axis (and the sequence axis if ``sequence``; a
        string names a sequence axis of its own, like ``Axis.new_unique_dynamic_axis``)."""
        seq = Axis(INT_MAX, sequence, True) if isinstance(sequence, str) else SEQUENCE_AXIS
        dyn = [seq, BATCH_AXIS] if sequence else [BATCH_AXIS]
        return self._var("Input", 0, np_shape, name, dynamic=dyn)

    def parameter(self, array: np.ndarray, name: str = "") -> str:
        a = np.asarray(array, dtype=np.float32)
        return self._var("Parameter", 2, a.shape, name, value=a)

    def constant(self, array: Any, name: str = "") -> str:
        a = np.asarray(array, dtype=np.float32)
        return self._var("Constant", 3, a.shape, name, value=a)

    def op(self, op_name: str, inputs: Sequence[str], attributes: dict[str, Any] | None = None, *,
           name: str = "", op_number: int | None = None) -> str:
        """Append a primitive function; returns the uid of its output (``<uid>_Output_0``)."""
        uid = self._uid(op_name)
        d: dict[str, Any] = {
            "version": FUNCTION_VERSION, "type": "PrimitiveFunction", "uid": uid,
            "op": OP_NUMBERS[op_name] if op_number is None else op_number,
            "inputs": list(inputs), "attributes": dict(attributes or {}),
        }
        if name:
            d["name"] = name
        self.functions.append(d)
        if self._block_stack:
            self._block_stack[-1].append(uid)
        return f"{uid}_Output_0"

    def placeholder(self) -> str:
        """A forward declaration (CNTK's ``placeholder``/``ForwardDeclaration``): use it as an
        operand now, ``bind`` it to a function output later. This is how recurrent loops
        are closed: ``PastValue(placeholder)`` feeds the cell whose output the placeholder
        is then bound to (``Function.replace_placeholders``)."""
        return self._var("Placeholder", 4, (), "", dynamic=[SEQUENCE_AXIS, BATCH_AXIS])

    def bind(self, placeholder: str, output: str) -> None:
        """Replace ``placeholder`` by ``output`` wherever it is an operand, and drop it."""
        for d in self.functions:
            d["inputs"] = [output if x == placeholder else x for x in d["inputs"]]
            if "block_function_composite_arguments_map_values" in d:
                vals = d["block_function_composite_arguments_map_values"]
                d["block_function_composite_arguments_map_values"] = [output if x == placeholder else x for x in vals]
        self.variables = [v for v in self.variables if v["uid"] != placeholder]

    @contextlib.contextmanager
    def block(self, op_name: str, args: Sequence[str], name: str = "", outputs: int = 1) -> Iterator[_BlockHandle]:
        """A ``cntk.layers``-style Block: inner ops see Placeholders bound to ``args``; the
        Block's output is the last inner op's output (read ``handle.output`` after the block).
        A Block with several ``outputs`` ends with a Combine of them (``handle.outputs``)."""
        placeholders = [self._var("Placeholder", 4, (), "", dynamic=[BATCH_AXIS]) for _ in args]
        handle = _BlockHandle(placeholders)
        self._block_stack.append([])
        try:
            yield handle
        finally:
            inner = self._block_stack.pop()
        if not inner:
            raise ValueError("empty block")
        root = inner[-1]
        uid = self._uid("Block")
        d = {
            "version": FUNCTION_VERSION, "type": "PrimitiveFunction", "uid": uid, "op": OP_NUMBERS["Block"],
            "inputs": list(args), "attributes": {},
            "block_function_op_name": op_name,
            "block_function_composite": {"root": root, "type": "CompositeFunction", "uid": self._uid("Composite"),
                                         "version": COMPOSITE_VERSION},
            "block_function_composite_arguments_map_keys": list(placeholders),
            "block_function_composite_arguments_map_values": list(args),
        }
        if name:
            d["name"] = name
        self.functions.append(d)
        if self._block_stack:
            self._block_stack[-1].append(uid)
        handle.output = f"{uid}_Output_0"
        handle.outputs = [f"{uid}_Output_{i}" for i in range(outputs)]

    def model(self, root_output: str | Sequence[str], name: str = "") -> dict[str, Any]:
        """The top-level CompositeFunction dictionary (several outputs -> a Combine root)."""
        if isinstance(root_output, str):
            root = root_output.rsplit("_Output_", 1)[0]
        else:
            root = self.op("Combine", list(root_output)).rsplit("_Output_", 1)[0]
        top: dict[str, Any] = {
            "version": COMPOSITE_VERSION, "type": "CompositeFunction", "uid": self._uid("CompositeFunction"),
            "root": root, "inputs": list(reversed(self.variables)), "primitive_functions": list(self.functions),
        }
        if name:
            top["name"] = name
        return top

    def save(self, path: str | Path, root_output: str | Sequence[str], *, large: bool = False, name: str = "") -> Path:
        from portanet.ir.io import atomic_write_bytes

        # atomically: the zoo rewrites its cached files while parallel test workers read them
        return atomic_write_bytes(path, encode(self.model(root_output, name), large=large))


class _BlockHandle:
    def __init__(self, placeholders: list[str]) -> None:
        self.args = placeholders
        self.output = ""
        self.outputs: list[str] = []
