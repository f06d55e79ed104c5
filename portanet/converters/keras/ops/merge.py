"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError

_BINARY = {"Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Maximum": "Max", "Minimum": "Min",
           "Average": "Add"}


def common_inputs(ctx: KerasContext, inputs: list) -> tuple[list[ir.Value], layout.Perm]:
    """All inputs in one layout: the first input's if every input has its rank, else Keras order."""
    ranks = {len(t.shape) for t in inputs}
    perm = ctx.perm_of(inputs[0]) if len(ranks) == 1 else layout.identity(max(ranks))
    if len(ranks) != 1:
        return [ctx.get(t) for t in inputs], perm
    return [ctx.get(t, perm) for t in inputs], perm


@HANDLERS.register(*_BINARY)
def elementwise(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    kind = type(layer).__name__
    if kind == "Subtract" and len(inputs) != 2:
        raise ConversionError(f"expected 2 inputs, received {len(inputs)}")
    values, perm = common_inputs(ctx, inputs)
    onnx_op = _BINARY[kind]
    y = values[0]
    for v in values[1:]:
        # Keras folds pairwise from the left; keeping that order keeps rounding identical
        y = ctx.op(onnx_op, [y, v])
    if kind == "Average":
        y = ctx.op("Div", [y, ctx.const(float(len(values)))])
    if len(values) == 1:
        y = ctx.op("Identity", [y])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("Concatenate")
def concatenate(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    values, perm = common_inputs(ctx, inputs)
    ctx.set(outputs[0], ctx.op("Concat", values, {"axis": layout.ir_axis(int(layer.axis), perm)}), perm)


def _l2_normalize(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    # Keras: x / sqrt(max(sum(x^2), 1e-12))
    ss = ctx.op("ReduceSum", [ctx.op("Mul", [x, x]), ctx.ints([axis])], {"keepdims": 1})
    norm = ctx.op("Sqrt", [ctx.op("Max", [ss, ctx.const(1e-12)])])
    return ctx.op("Div", [x, norm])


@HANDLERS.register("Dot")
def dot(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    if len(inputs) != 2:
        raise ConversionError(f"expected 2 inputs, received {len(inputs)}")
    a_t, b_t = inputs
    ra, rb = len(a_t.shape), len(b_t.shape)
    axes = layer.axes if isinstance(layer.axes, list | tuple) else [layer.axes, layer.axes]
    ax_a, ax_b = (int(axes[0]) % ra, int(axes[1]) % rb)
    a, b = ctx.get(a_t), ctx.get(b_t)
    if layer.normalize:
        a, b = _l2_normalize(ctx, a, ax_a), _l2_normalize(ctx, b, ax_b)
    if ra == 2 and rb == 2:
        # (N, D) . (N, D) -> (N, 1)
        y = ctx.op("ReduceSum", [ctx.op("Mul", [a, b]), ctx.ints([1])], {"keepdims": 1})
    elif ra == 3 and rb == 3:
        # batched matmul contracting ax_a of a with ax_b of b: (N, I, K) @ (N, K, J)
        if ax_a == 1:
            a = ctx.op("Transpose", [a], {"perm": [0, 2, 1]})
        if ax_b == 2:
            b = ctx.op("Transpose", [b], {"perm": [0, 2, 1]})
        y = ctx.op("MatMul", [a, b])
    else:
        raise ConversionError(f"expected two rank-2 or two rank-3 inputs, received ranks {ra} and {rb}")
    ctx.set(outputs[0], y)
