"""Helpers shared by the lowering modules (dtype tables, attribute access)."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir
import torch

from portanet.runtime.torch_backend.lowering import attr  # re-exported for the op modules

__all__ = ["attr", "in_dtype", "is_float_input", "output_used", "torch_dtype"]

_TORCH_DTYPES: dict[int, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32,
    ir.DataType.DOUBLE: torch.float64,
    ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16,
    ir.DataType.INT64: torch.int64,
    ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16,
    ir.DataType.INT8: torch.int8,
    ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
    ir.DataType.FLOAT8E4M3FN: torch.float8_e4m3fn,
    ir.DataType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    ir.DataType.FLOAT8E5M2: torch.float8_e5m2,
    ir.DataType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    # torch has only partial unsigned support: widen to int64
    ir.DataType.UINT16: torch.int64,
    ir.DataType.UINT32: torch.int64,
    ir.DataType.UINT64: torch.int64,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    """ONNX TensorProto data type number -> torch dtype."""
    try:
        return _TORCH_DTYPES[ir.DataType(onnx_type)]
    except (KeyError, ValueError) as exc:
        name = ir.DataType(onnx_type).name if onnx_type in ir.DataType._value2member_map_ else str(onnx_type)
        raise ValueError(f"data type {name} is not supported by the torch backend") from exc


def in_dtype(node: ir.Node, i: int) -> torch.dtype | None:
    """The torch dtype of input ``i`` as declared in the IR (None when unknown)."""
    v = node.inputs[i] if i < len(node.inputs) else None
    if v is None or v.dtype is None:
        return None
    try:
        return torch_dtype(v.dtype)
    except ValueError:
        return None


def is_float_input(node: ir.Node, i: int, ref: Any = None) -> bool | None:
    """Whether input ``i`` is floating point: from a constant, the IR type, or None (unknown)."""
    if isinstance(ref, torch.Tensor):
        return ref.is_floating_point()
    dt = in_dtype(node, i)
    return None if dt is None else dt.is_floating_point


def output_used(node: ir.Node, i: int) -> bool:
    """Whether output ``i`` exists and something (a node or a graph output) consumes it."""
    if i >= len(node.outputs):
        return False
    v = node.outputs[i]
    if not v.name:
        return False
    return bool(v.uses()) or v.is_graph_output()
