"""Elementwise CNTK ops: unary math/activations, binary arithmetic with CNTK broadcasting, Clip,
and the identities (Pass, NoOp, StopGradient, Dropout at inference)."""

from __future__ import annotations

import numpy as np

from portanet.converters.cntk.context import HANDLERS, Ctx, T, attr, dynamic_of
from portanet.converters.cntk.graph import Function
from portanet.errors import ConversionError

#: CNTK unary op -> ONNX op (one-line table entries)
UNARY = {
    "Negate": "Neg", "Sigmoid": "Sigmoid", "StableSigmoid": "Sigmoid", "Tanh": "Tanh", "ReLU": "Relu",
    "Exp": "Exp", "Log": "Log", "Sqrt": "Sqrt", "Abs": "Abs", "Reciprocal": "Reciprocal", "Floor": "Floor",
    "Sin": "Sin", "Cos": "Cos",
}
#: CNTK binary op -> ONNX op
BINARY = {"Plus": "Add", "Minus": "Sub", "ElementTimes": "Mul"}


def _unary(onnx_op: str):
    def handler(ctx: Ctx, f: Function, ins: list[T]) -> T:
        (x,) = ins[:1]
        return x.like(ctx.op(f, onnx_op, [x.value], final=True), x.shape)

    return handler


for _cntk, _onnx in UNARY.items():
    HANDLERS.register(_cntk)(_unary(_onnx))


def align(ctx: Ctx, f: Function, a: T, b: T) -> tuple[T, T]:
    """CNTK broadcasting aligns the *leading* CNTK axes = the *trailing* NumPy axes, which is
    NumPy broadcasting on the sample; when both operands carry the batch axis, the lower-rank
    sample gets unit axes after the batch axis so the batch axes line up."""
    dynamic_of(f, a, b)  # both batched: the same dynamic axes
    if a.batched and b.batched and a.rank != b.rank:
        lo, hi = (a, b) if a.rank < b.rank else (b, a)
        extra = hi.rank - lo.rank
        lo2 = ctx.reshape(f, lo, (1,) * extra + lo.shape)
        return (lo2, hi) if lo is a else (hi, lo2)
    return a, b


def broadcast_shape(f: Function, a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError as exc:
        raise ConversionError(f"operand shapes {list(a)} and {list(b)} (NumPy order) do not broadcast") from exc


def _binary(onnx_op: str):
    def handler(ctx: Ctx, f: Function, ins: list[T]) -> T:
        if len(ins) != 2:
            raise ConversionError(f"expected 2 inputs, received {len(ins)}")
        a, b = align(ctx, f, ins[0], ins[1])
        shape = broadcast_shape(f, a.shape, b.shape)
        return dynamic_of(f, a, b).like(ctx.op(f, onnx_op, [a.value, b.value], final=True), shape)

    return handler


for _cntk, _onnx in BINARY.items():
    HANDLERS.register(_cntk)(_binary(_onnx))


@HANDLERS.register("LogPlus")
def log_plus(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """log(exp(a) + exp(b)) (CNTK's LogAddExp; ``softplus`` is a Block of it), computed as
    max(a, b) + softplus(-|a - b|) so large operands do not overflow."""
    if len(ins) != 2:
        raise ConversionError(f"expected 2 inputs, received {len(ins)}")
    a, b = align(ctx, f, ins[0], ins[1])
    shape = broadcast_shape(f, a.shape, b.shape)
    gap = ctx.op(f, "Neg", [ctx.op(f, "Abs", [ctx.op(f, "Sub", [a.value, b.value])])])
    y = ctx.op(f, "Add", [ctx.op(f, "Max", [a.value, b.value]), ctx.op(f, "Softplus", [gap])], final=True)
    return dynamic_of(f, a, b).like(y, shape)


#: CNTK comparisons -> (ONNX op, negate): CNTK returns 1.0 / 0.0 in the operands' type
COMPARISONS = {"Equal": ("Equal", False), "NotEqual": ("Equal", True), "Less": ("Less", False),
               "LessEqual": ("LessOrEqual", False), "Greater": ("Greater", False),
               "GreaterEqual": ("GreaterOrEqual", False)}


def _comparison(onnx_op: str, negate: bool):
    def handler(ctx: Ctx, f: Function, ins: list[T]) -> T:
        if len(ins) != 2:
            raise ConversionError(f"expected 2 inputs, received {len(ins)}")
        a, b = align(ctx, f, ins[0], ins[1])
        shape = broadcast_shape(f, a.shape, b.shape)
        c = ctx.op(f, onnx_op, [a.value, b.value])
        if negate:
            c = ctx.op(f, "Not", [c])
        return dynamic_of(f, a, b).like(ctx.op(f, "Cast", [c], {"to": 1}, final=True), shape)

    return handler


for _cntk, (_onnx, _neg) in COMPARISONS.items():
    HANDLERS.register(_cntk)(_comparison(_onnx, _neg))


@HANDLERS.register("Select")
def select(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """ElementSelect(condition, then, else): ``then`` where the condition is non-zero."""
    if len(ins) != 3:
        raise ConversionError(f"expected 3 inputs (condition, then, else), received {len(ins)}")
    cond, a, b = ins
    a, b = align(ctx, f, a, b)
    cond, a = align(ctx, f, cond, a)
    cond, b = align(ctx, f, cond, b)
    shape = broadcast_shape(f, broadcast_shape(f, cond.shape, a.shape), b.shape)
    mask = ctx.op(f, "Not", [ctx.op(f, "Equal", [cond.value, ctx.const(np.float32(0))])])
    return dynamic_of(f, cond, a, b).like(ctx.op(f, "Where", [mask, a.value, b.value], final=True), shape)


@HANDLERS.register("ELU")
def elu(ctx: Ctx, f: Function, ins: list[T]) -> T:
    x = ins[0]
    alpha = float(attr(f, "alpha", 1.0))
    return x.like(ctx.op(f, "Elu", [x.value], {"alpha": alpha}, final=True), x.shape)


@HANDLERS.register("Clip")
def clip(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """Clip(x, min, max): min/max are tensors in CNTK (usually scalar Constants)."""
    if len(ins) != 3:
        raise ConversionError(f"expected 3 inputs (x, min, max), received {len(ins)}")
    x, lo, hi = ins
    if lo.array is not None and hi.array is not None and lo.array.size == 1 and hi.array.size == 1:
        lo_v = ctx.const(np.float32(lo.array.reshape(())))
        hi_v = ctx.const(np.float32(hi.array.reshape(())))
        return x.like(ctx.op(f, "Clip", [x.value, lo_v, hi_v], final=True), x.shape)
    # tensor bounds: max(min(x, hi), lo) with CNTK broadcasting
    a, b = align(ctx, f, x, hi)
    m = dynamic_of(f, a, b).like(ctx.op(f, "Min", [a.value, b.value]), broadcast_shape(f, a.shape, b.shape))
    a, b = align(ctx, f, m, lo)
    return dynamic_of(f, a, b).like(ctx.op(f, "Max", [a.value, b.value], final=True),
                                    broadcast_shape(f, a.shape, b.shape))


@HANDLERS.register("Pass", "NoOp", "StopGradient", "Dropout")
def identity(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """No computation at inference: the output is the input tensor itself (no node)."""
    if not ins:
        raise ConversionError("expected 1 input, received none")
    return ins[0]
