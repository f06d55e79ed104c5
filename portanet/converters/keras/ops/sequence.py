"""Masks and the layers that make or combine them: the Masking layer, the masks of
``Embedding(mask_zero=True)``, merge layers and Concatenate (see ``masking.py``), and
GlobalAveragePooling1D over a masked sequence."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout, masking
from portanet.converters.keras.context import KerasContext
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError

_BOOL = ir.DataType.BOOL


def _not_equal_any(ctx: KerasContext, x: ir.Value, value: float, axis: int) -> ir.Value:
    """float 0/1: any(x != value) over ``axis``, kept (Keras' Masking boolean_mask)."""
    differs = ctx.op("Cast", [ctx.op("Not", [ctx.op("Equal", [x, ctx.const(value)])])], {"to": ir.DataType.FLOAT})
    return ctx.op("ReduceMax", [differs, ctx.ints([axis])], {"keepdims": 1})


@HANDLERS.register("Masking")
def masking_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    # Keras: where(any(x != mask_value, axis=-1, keepdims=True), x, 0); any layout works
    x, perm = ctx.get_any(inputs[0])
    keep = _not_equal_any(ctx, x, float(layer.mask_value), layout.ir_axis(-1, perm))
    y = ctx.op("Where", [ctx.op("Cast", [keep], {"to": _BOOL}), x, ctx.const(0.0)])
    ctx.set(outputs[0], y, perm)


@masking.mask_rule("Masking")
def _masking_mask(ctx: KerasContext, layer: Any, node: Any) -> list[ir.Value | None]:
    x = ctx.get(node.input_tensors[0])  # Keras order: the mask is (N, T)
    keep = _not_equal_any(ctx, x, float(layer.mask_value), -1)
    return [ctx.op("Cast", [ctx.op("Squeeze", [keep, ctx.ints([-1])])], {"to": _BOOL})]


@masking.mask_rule("Embedding")
def _embedding_mask(ctx: KerasContext, layer: Any, node: Any) -> list[ir.Value | None]:
    ids_t = node.input_tensors[0]
    ids = ctx.get(ids_t)
    zero = ctx.const(0, np.dtype(str(ids_t.dtype)))  # ids != 0 in the ids' own dtype
    return [ctx.op("Not", [ctx.op("Equal", [ids, zero])])]


def _input_masks(ctx: KerasContext, node: Any) -> list[ir.Value | None]:
    masks = masking.call_masks(node).get("mask")
    if masks is None:
        masks = [masking.keras_mask(t) for t in node.input_tensors]
    masks = masks if isinstance(masks, list | tuple) else [masks]
    return [ctx.get(m) if m is not None else None for m in masks]


@masking.mask_rule("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")
def _merge_mask(ctx: KerasContext, layer: Any, node: Any) -> list[ir.Value | None]:
    # Keras: logical_or of the masks, none if any input is unmasked
    masks = _input_masks(ctx, node)
    if any(m is None for m in masks):
        return [None]
    y = masks[0]
    for m in masks[1:]:
        y = ctx.op("Or", [y, m])
    return [ctx.op("Identity", [y]) if len(masks) == 1 else y]


@masking.mask_rule("Concatenate")
def _concatenate_mask(ctx: KerasContext, layer: Any, node: Any) -> list[ir.Value | None]:
    # Keras: each mask broadcast to its input's shape (all True if unmasked), concatenated
    # along the axis, then any() over the last axis
    masks = _input_masks(ctx, node)
    rank = len(node.output_tensors[0].shape)
    axis = int(layer.axis) % rank
    if axis == rank - 1:
        present = [m for m in masks if m is not None]
        if len(present) < len(masks):
            return [ctx.op("Or", [present[0], ctx.op("Not", [present[0]])])]  # all True
        y = present[0]
        for m in present[1:]:
            y = ctx.op("Or", [y, m])
        return [y]
    if axis < rank - 1 and all(m is not None for m in masks):
        return [ctx.op("Concat", masks, {"axis": axis})]
    raise ConversionError(f"the mask of a concatenation along axis {layer.axis} with an unmasked input "
                          "is not supported")


masking.consumes_masks("GlobalAveragePooling1D", "BatchNormalization", "TimeDistributed")


def masked_average_1d(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> bool:
    """GlobalAveragePooling1D over a masked sequence (True if it was masked and is handled):
    Keras averages the valid steps only, ``sum(where(mask, x, 0)) / sum(mask)``."""
    mask_t = masking.call_masks(ctx.node).get("mask") if ctx.node is not None else None
    if isinstance(mask_t, list | tuple):
        mask_t = mask_t[0] if mask_t else None
    if mask_t is None:
        return False
    # in the Keras order: (N, T, F) channels_last, (N, F, T) channels_first
    last = layer.data_format == "channels_last"
    steps = 1 if last else 2
    x = ctx.get(inputs[0])
    m = ctx.op("Unsqueeze", [ctx.get(mask_t), ctx.ints([2 if last else 1])])
    x = ctx.op("Where", [m, x, ctx.const(0.0)])
    keep = int(bool(layer.keepdims))
    total = ctx.op("ReduceSum", [x, ctx.ints([steps])], {"keepdims": keep})
    count = ctx.op("ReduceSum", [ctx.op("Cast", [m], {"to": ir.DataType.FLOAT}), ctx.ints([steps])],
                   {"keepdims": keep})
    ctx.set(outputs[0], ctx.op("Div", [total, count]))
    return True


def _flatten_time(ctx: KerasContext, x: ir.Value) -> ir.Value:
    """(N, T, *rest) -> (N*T, *rest)."""
    rest = ctx.op("Shape", [x], {"start": 2})
    return ctx.op("Reshape", [x, ctx.op("Concat", [ctx.ints([-1]), rest], {"axis": 0})])


@HANDLERS.register("TimeDistributed")
def time_distributed(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    import keras

    inner = layer.layer
    kind = type(inner).__name__
    if masking.call_masks(ctx.node).get("mask") is not None and getattr(inner, "_call_has_mask_arg", False):
        raise ConversionError(f"a masked input to a wrapped {kind} (which takes the mask) is not supported")
    if kind not in HANDLERS:
        raise ConversionError(f"the wrapped layer type {kind} is not supported")
    x_t = inputs[0]
    # the wrapped layer sees (N*T, *rest): symbolic stand-ins for its input and output
    inner_in = keras.KerasTensor((None, *x_t.shape[2:]), dtype=x_t.dtype)
    inner_out = inner.compute_output_spec(inner_in)
    if isinstance(inner_out, list | tuple):
        raise ConversionError(f"expected one output from the wrapped {kind}")
    x = ctx.get(x_t)
    ctx.set(inner_in, _flatten_time(ctx, x))
    with ctx.b.layer(f"{layer.name}/{inner.name}", kind):
        HANDLERS.call(kind, inner.name, ctx, inner, [inner_in], [inner_out])
    y = ctx.get(inner_out)  # Keras order (N*T, *out)
    nt = ctx.op("Shape", [x], {"start": 0, "end": 2})
    rest = ctx.op("Shape", [y], {"start": 1})
    ctx.set(outputs[0], ctx.op("Reshape", [y, ctx.op("Concat", [nt, rest], {"axis": 0})]))


# -- keras.ops calls that a saved model's mask computations contain ------------------------
# A model loaded from a file carries the mask computations of compute_mask as explicit
# graph nodes (e.g. Concatenate's ZerosLike, Attention's ConvertToTensor); the other ops
# they use are handled with the raw keras.ops table.

def _mask_op(name: str) -> Any:
    def deco(fn: Any) -> Any:
        if f"ops.{name}" not in HANDLERS:  # the raw keras.ops table may handle it already
            HANDLERS.register(f"ops.{name}")(fn)
        return fn

    return deco


def _out_type(tensor: Any) -> int:
    from portanet.ir.builder import ir_dtype

    return int(ir_dtype(np.dtype(str(tensor.dtype))))


@_mask_op("ConvertToTensor")
def _convert_to_tensor(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    same = str(inputs[0].dtype) == str(outputs[0].dtype)
    y = ctx.op("Identity", [x]) if same else ctx.op("Cast", [x], {"to": _out_type(outputs[0])})
    ctx.set(outputs[0], y, perm)


@_mask_op("ZerosLike")
def _zeros_like(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    zero = ir.tensor(np.zeros(1, np.dtype(str(outputs[0].dtype))))
    ctx.set(outputs[0], ctx.op("ConstantOfShape", [ctx.op("Shape", [x])], {"value": zero}), perm)
