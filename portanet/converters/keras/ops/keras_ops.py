"""Raw ``keras.ops`` calls recorded in functional graphs (``ops.Add``, ``ops.Mean``, ``x[1:3]``, ...).

Keras 3 records a ``keras.ops`` call on symbolic tensors as an Operation node; its handler
key is ``ops.<ClassName>``. Unlike layers, such a node keeps its non-tensor arguments
(scalars, slice keys, variables of a traced layer) in the node, so handlers read them from
``ctx.node.arguments`` bound to the operation's ``call`` signature.

Layout: elementwise ops, reductions, softmax, concatenation, slicing, padding, clipping
and image resizing work on whatever layout their input is held in (an image stays NCHW in
the IR through ``x * hard_sigmoid(x)``); ops that reinterpret the element order
(reshape, matmul, einsum, stack, ...) take the Keras order.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.converters.keras.ops.activations import SELU_ALPHA, SELU_SCALE, gelu
from portanet.errors import ConversionError
from portanet.ir.builder import ir_dtype

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min

#: every keras.ops operation class this module handles (the test enumerates it)
HANDLED: list[str] = []


def _register(*names: str) -> Callable:
    HANDLED.extend(names)
    return HANDLERS.register(*(f"ops.{n}" for n in names))


# -- arguments -----------------------------------------------------------------------------
def is_tensor(x: Any) -> bool:
    return hasattr(x, "_keras_history")


def is_variable(x: Any) -> bool:
    if "keras" not in sys.modules:  # nothing is a Keras variable then (a file read without Keras)
        return False
    import keras

    return isinstance(x, keras.Variable)


def bound_args(ctx: KerasContext, op: Any) -> dict[str, Any]:
    """The node's call arguments by parameter name (defaults filled in)."""
    args = ctx.node.arguments
    sig = inspect.signature(op.call)
    bound = sig.bind(*args.args, **args.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def np_dtype(dtype: Any) -> np.dtype:
    name = getattr(dtype, "name", None) or str(dtype)
    return np.dtype("bool" if name == "bool" else name)


def onnx_type(dtype: Any) -> int:
    return int(ir_dtype(np_dtype(dtype)))


def variable_value(ctx: KerasContext, var: Any) -> ir.Value:
    """A Keras variable of a traced layer as a (trainable, for floats) initializer, shared."""
    key = ("variable", str(getattr(var, "path", id(var))))
    cache = ctx._weights
    if key not in cache:
        arr = to_numpy(var)
        cache[key] = ctx.b.initializer(str(getattr(var, "path", "variable")).replace(":", "_"), arr)
    return cache[key]


class Operand:
    """One argument of an elementwise op: a tensor (with its rank) or a constant array."""

    def __init__(self, ctx: KerasContext, arg: Any) -> None:
        self.tensor = arg if is_tensor(arg) else None
        self.variable = arg if (self.tensor is None and is_variable(arg)) else None
        if self.tensor is not None:
            self.rank = len(arg.shape)
            self.dtype = np_dtype(arg.dtype)
            self.array = None
        elif self.variable is not None:
            self.array = None
            self.rank = len(arg.shape)
            self.dtype = np_dtype(arg.dtype)
        else:
            self.array = np.asarray(to_numpy(arg) if hasattr(arg, "numpy") else arg)
            self.rank = self.array.ndim
            self.dtype = None  # weakly typed: takes the tensors' dtype

    def value(self, ctx: KerasContext, rank: int, perm: layout.Perm, dtype: np.dtype) -> ir.Value:
        """This operand broadcast (NumPy style) to ``rank`` and held with ``perm``, as ``dtype``."""
        if self.array is not None:
            arr = self.array.astype(dtype).reshape((1,) * (rank - self.rank) + self.array.shape)
            return ctx.b.const(np.ascontiguousarray(np.transpose(arr, perm)))
        if self.variable is not None:
            v = variable_value(ctx, self.variable)
            if self.rank < rank or not layout.is_identity(perm):
                if self.rank < rank:
                    v = ctx.op("Reshape", [v, ctx.ints([1] * (rank - self.rank) + list(self.variable.shape))])
                if not layout.is_identity(perm):
                    v = ctx.op("Transpose", [v], {"perm": list(perm)})
        elif self.rank == rank:
            v = ctx.get(self.tensor, perm)
        else:
            v = ctx.get(self.tensor)
            v = ctx.op("Unsqueeze", [v, ctx.ints(range(rank - self.rank))])
            if not layout.is_identity(perm):
                v = ctx.op("Transpose", [v], {"perm": list(perm)})
        if self.dtype != dtype:
            v = ctx.op("Cast", [v], {"to": int(ir_dtype(dtype))})
        return v


def common_perm(ctx: KerasContext, operands: Sequence[Operand], out_rank: int) -> layout.Perm:
    """The layout of the first full-rank tensor operand (the Keras order if there is none)."""
    for o in operands:
        if o.tensor is not None and o.rank == out_rank:
            return ctx.perm_of(o.tensor)
    return layout.identity(out_rank)


def elementwise_operands(ctx: KerasContext, args: Sequence[Any], out_rank: int,
                         dtype: np.dtype | None = None) -> tuple[list[ir.Value], layout.Perm]:
    """Every argument as an IR value in one common layout: the first full-rank tensor's."""
    ops = [Operand(ctx, a) for a in args]
    perm = common_perm(ctx, ops, out_rank)
    if dtype is None:
        dtypes = [o.dtype for o in ops if o.dtype is not None]
        dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.float32)
    return [o.value(ctx, out_rank, perm, dtype) for o in ops], perm


def _out_dtype(outputs: list) -> np.dtype:
    return np_dtype(outputs[0].dtype)


# -- elementwise -----------------------------------------------------------------------------
_UNARY = {
    "Absolute": "Abs", "Fabs": "Abs", "Negative": "Neg", "Exp": "Exp", "Log": "Log", "Sqrt": "Sqrt",
    "Sin": "Sin", "Cos": "Cos", "Tan": "Tan", "Tanh": "Tanh", "Sinh": "Sinh", "Cosh": "Cosh",
    "Arcsin": "Asin", "Arccos": "Acos", "Arctan": "Atan", "Arcsinh": "Asinh", "Arccosh": "Acosh",
    "Arctanh": "Atanh", "Floor": "Floor", "Ceil": "Ceil", "Sign": "Sign", "Reciprocal": "Reciprocal",
    "Erf": "Erf", "Sigmoid": "Sigmoid", "Relu": "Relu", "Softplus": "Softplus", "Softsign": "Softsign",
    "LogicalNot": "Not", "Copy": "Identity", "StopGradient": "Identity",
    "Selu": "Selu",
}
_UNARY_ATTRS: dict[str, dict[str, Any]] = {"Selu": {"alpha": SELU_ALPHA, "gamma": SELU_SCALE}}


def _unary_input(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> tuple[ir.Value, layout.Perm]:
    x, perm = ctx.get_any(inputs[0])
    in_dt, out_dt = np_dtype(inputs[0].dtype), _out_dtype(outputs)
    if in_dt != out_dt and out_dt != np.dtype(bool) and np.issubdtype(out_dt, np.floating):
        x = ctx.op("Cast", [x], {"to": int(ir_dtype(out_dt))})  # e.g. sqrt of an int tensor
    return x, perm


@_register(*_UNARY)
def unary(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    kind = type(op).__name__
    x, perm = _unary_input(ctx, op, inputs, outputs)
    ctx.set(outputs[0], ctx.op(_UNARY[kind], [x], _UNARY_ATTRS.get(kind)), perm)


def _composite(fn: Callable[[KerasContext, Any, ir.Value], ir.Value]) -> Callable:
    def handler(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
        x, perm = _unary_input(ctx, op, inputs, outputs)
        ctx.set(outputs[0], fn(ctx, op, x), perm)

    return handler


def _c(ctx: KerasContext, value: float) -> ir.Value:
    return ctx.const(value)


_COMPOSITE: dict[str, Callable[[KerasContext, Any, ir.Value], ir.Value]] = {
    "Square": lambda ctx, op, x: ctx.op("Mul", [x, x]),
    "Rsqrt": lambda ctx, op, x: ctx.op("Reciprocal", [ctx.op("Sqrt", [x])]),
    "Log1p": lambda ctx, op, x: ctx.op("Log", [ctx.op("Add", [x, _c(ctx, 1.0)])]),
    "Expm1": lambda ctx, op, x: ctx.op("Sub", [ctx.op("Exp", [x]), _c(ctx, 1.0)]),
    "Log2": lambda ctx, op, x: ctx.op("Div", [ctx.op("Log", [x]), _c(ctx, math.log(2.0))]),
    "Log10": lambda ctx, op, x: ctx.op("Div", [ctx.op("Log", [x]), _c(ctx, math.log(10.0))]),
    "Relu6": lambda ctx, op, x: ctx.op("Clip", [x, _c(ctx, 0.0), _c(ctx, 6.0)]),
    # keras.ops.hard_sigmoid: relu6(x + 3) / 6
    "HardSigmoid": lambda ctx, op, x: ctx.op(
        "Div", [ctx.op("Clip", [ctx.op("Add", [x, _c(ctx, 3.0)]), _c(ctx, 0.0), _c(ctx, 6.0)]), _c(ctx, 6.0)]),
    # keras.ops.hard_silu / hard_swish: x * hard_sigmoid(x)
    "HardSilu": lambda ctx, op, x: ctx.op("Mul", [x, _COMPOSITE["HardSigmoid"](ctx, op, x)]),
    "Silu": lambda ctx, op, x: ctx.op("Mul", [x, ctx.op("Sigmoid", [x])]),
    "LogSigmoid": lambda ctx, op, x: ctx.op("Neg", [ctx.op("Softplus", [ctx.op("Neg", [x])])]),
    "Gelu": lambda ctx, op, x: gelu(ctx, x, approximate=bool(op.approximate)),
    "Elu": lambda ctx, op, x: ctx.op("Elu", [x], {"alpha": float(op.alpha)}),
    "Celu": lambda ctx, op, x: ctx.op("Celu", [x], {"alpha": float(op.alpha)}),
    "LeakyRelu": lambda ctx, op, x: ctx.op("LeakyRelu", [x], {"alpha": float(op.negative_slope)}),
    "HardTanh": lambda ctx, op, x: ctx.op("Clip", [x, _c(ctx, -1.0), _c(ctx, 1.0)]),
    "Round": lambda ctx, op, x: _round(ctx, op, x),
    # IsNaN / IsInf through comparisons every backend runs: NaN is the one value unequal to itself
    "Isnan": lambda ctx, op, x: ctx.op("Not", [ctx.op("Equal", [x, x])]),
    "Isinf": lambda ctx, op, x: ctx.op("Equal", [ctx.op("Abs", [x]), _c(ctx, math.inf)]),
}


def _round(ctx: KerasContext, op: Any, x: ir.Value) -> ir.Value:
    if int(getattr(op, "decimals", 0) or 0) != 0:
        raise ConversionError(f"round with decimals={op.decimals} is not supported (only 0)")
    return ctx.op("Round", [x])  # half to even, like NumPy and TensorFlow


for _name, _fn in _COMPOSITE.items():
    _register(_name)(_composite(_fn))


_BINARY = {
    "Add": "Add", "Subtract": "Sub", "Multiply": "Mul", "Divide": "Div", "TrueDivide": "Div",
    "Power": "Pow", "Maximum": "Max", "Minimum": "Min",
}
_COMPARE = {
    "Equal": "Equal", "NotEqual": "Equal", "Greater": "Greater", "GreaterEqual": "GreaterOrEqual",
    "Less": "Less", "LessEqual": "LessOrEqual", "LogicalAnd": "And", "LogicalOr": "Or", "LogicalXor": "Xor",
}


@_register(*_BINARY)
def binary(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    kind = type(op).__name__
    dtype = _out_dtype(outputs)
    (x, y), perm = elementwise_operands(ctx, [a["x1"], a["x2"]], len(outputs[0].shape), dtype)
    onnx_op = _BINARY[kind]
    if onnx_op == "Div" and not np.issubdtype(dtype, np.floating):
        raise ConversionError(f"integer {kind} is not supported")
    ctx.set(outputs[0], ctx.op(onnx_op, [x, y]), perm)


@_register(*_COMPARE)
def compare(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    kind = type(op).__name__
    logical = kind.startswith("Logical")
    (x, y), perm = elementwise_operands(ctx, [a["x1"], a["x2"]], len(outputs[0].shape),
                                        np.dtype(bool) if logical else None)
    z = ctx.op(_COMPARE[kind], [x, y])
    if kind == "NotEqual":
        z = ctx.op("Not", [z])
    ctx.set(outputs[0], z, perm)


@_register("FloorDivide", "Mod")
def floor_div_mod(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    dtype = _out_dtype(outputs)
    (x, y), perm = elementwise_operands(ctx, [a["x1"], a["x2"]], len(outputs[0].shape), dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ConversionError(f"integer {type(op).__name__} is not supported")
    q = ctx.op("Floor", [ctx.op("Div", [x, y])])
    # Python semantics: the remainder takes the divisor's sign: x - floor(x / y) * y
    z = q if type(op).__name__ == "FloorDivide" else ctx.op("Sub", [x, ctx.op("Mul", [q, y])])
    ctx.set(outputs[0], z, perm)


@_register("Where")
def where(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    if a["x1"] is None or a["x2"] is None:
        raise ConversionError("where(condition) without x1/x2 (nonzero indices) is not supported")
    rank = len(outputs[0].shape)
    cond, x1, x2 = (Operand(ctx, a[k]) for k in ("condition", "x1", "x2"))
    perm = common_perm(ctx, [cond, x1, x2], rank)
    dtype = _out_dtype(outputs)
    values = [cond.value(ctx, rank, perm, np.dtype(bool)), x1.value(ctx, rank, perm, dtype),
              x2.value(ctx, rank, perm, dtype)]
    ctx.set(outputs[0], ctx.op("Where", values), perm)


@_register("Clip")
def clip(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    dtype = np_dtype(inputs[0].dtype)
    lo = ctx.b.const(np.asarray(op.x_min, dtype=dtype)) if op.x_min is not None else None
    hi = ctx.b.const(np.asarray(op.x_max, dtype=dtype)) if op.x_max is not None else None
    y = ctx.op("Clip", [x, lo, hi])
    if _out_dtype(outputs) != dtype:
        y = ctx.op("Cast", [y], {"to": onnx_type(outputs[0].dtype)})
    ctx.set(outputs[0], y, perm)


@_register("Cast")
def cast(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    ctx.set(outputs[0], ctx.op("Cast", [x], {"to": onnx_type(op.dtype)}), perm)


# -- softmax-like (one axis) -----------------------------------------------------------------
@_register("Softmax", "LogSoftmax")
def softmax(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    axes = op.axis if isinstance(op.axis, list | tuple) else [op.axis]
    if len(axes) != 1:
        raise ConversionError(f"expected a single softmax axis, received {list(axes)}")
    onnx_op = "Softmax" if type(op).__name__ == "Softmax" else "LogSoftmax"
    ctx.set(outputs[0], ctx.op(onnx_op, [x], {"axis": layout.ir_axis(int(axes[0]), perm)}), perm)


# -- reductions ------------------------------------------------------------------------------
def drop_axes(perm: layout.Perm, dropped: Sequence[int]) -> layout.Perm:
    """The layout left when Keras axes ``dropped`` are removed from a value held with ``perm``."""
    gone = set(dropped)
    return tuple(p - sum(1 for d in gone if d < p) for p in perm if p not in gone)


def _keras_axes(axis: Any, rank: int) -> list[int]:
    if axis is None:
        return list(range(rank))
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    return sorted(int(a) % rank for a in axes)


_REDUCE = {
    "Mean": "ReduceMean", "Sum": "ReduceSum", "Max": "ReduceMax", "Min": "ReduceMin", "Amax": "ReduceMax",
    "Amin": "ReduceMin", "Prod": "ReduceProd", "Logsumexp": "ReduceLogSumExp",
}


def _reduce_setup(ctx: KerasContext, op: Any, inputs: list) -> tuple[ir.Value, layout.Perm, list[int], bool]:
    x, perm = ctx.get_any(inputs[0])
    rank = len(inputs[0].shape)
    axes = _keras_axes(op.axis, rank)
    return x, perm, axes, bool(op.keepdims)


def _reduced_perm(perm: layout.Perm, axes: list[int], keep: bool) -> layout.Perm:
    return perm if keep else drop_axes(perm, axes)


@_register(*_REDUCE)
def reduce(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm, axes, keep = _reduce_setup(ctx, op, inputs)
    if getattr(op, "initial", None) is not None:
        raise ConversionError("max/min with initial= is not supported")
    if np_dtype(inputs[0].dtype) != _out_dtype(outputs):
        x = ctx.op("Cast", [x], {"to": onnx_type(outputs[0].dtype)})
    ir_axes = sorted(layout.ir_axis(a, perm) for a in axes)
    y = ctx.op(_REDUCE[type(op).__name__], [x, ctx.ints(ir_axes)], {"keepdims": int(keep)})
    ctx.set(outputs[0], y, _reduced_perm(perm, axes, keep))


@_register("Var", "Std")
def variance(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm, axes, keep = _reduce_setup(ctx, op, inputs)
    ax = ctx.ints(sorted(layout.ir_axis(a, perm) for a in axes))
    # population variance: mean((x - mean(x))^2)
    d = ctx.op("Sub", [x, ctx.op("ReduceMean", [x, ax], {"keepdims": 1})])
    y = ctx.op("ReduceMean", [ctx.op("Mul", [d, d]), ax], {"keepdims": int(keep)})
    if type(op).__name__ == "Std":
        y = ctx.op("Sqrt", [y])
    ctx.set(outputs[0], y, _reduced_perm(perm, axes, keep))


@_register("All", "Any")
def all_any(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm, axes, keep = _reduce_setup(ctx, op, inputs)
    # booleans as 0/1: all = min, any = max
    x = ctx.op("Cast", [ctx.op("Cast", [x], {"to": int(ir.DataType.BOOL)})], {"to": int(ir.DataType.INT32)})
    red = "ReduceMin" if type(op).__name__ == "All" else "ReduceMax"
    y = ctx.op(red, [x, ctx.ints(sorted(layout.ir_axis(a, perm) for a in axes))], {"keepdims": int(keep)})
    ctx.set(outputs[0], ctx.op("Cast", [y], {"to": int(ir.DataType.BOOL)}), _reduced_perm(perm, axes, keep))


@_register("Argmax", "Argmin")
def argmax(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    if op.axis is None:
        x = ctx.op("Reshape", [ctx.get(inputs[0]), ctx.ints([-1])])
        axis, perm, keep = 0, layout.identity(1), False
    else:
        x, perm = ctx.get_any(inputs[0])
        axis, keep = int(op.axis) % rank, bool(op.keepdims)
    onnx_op = "ArgMax" if type(op).__name__ == "Argmax" else "ArgMin"
    y = ctx.op(onnx_op, [x], {"axis": layout.ir_axis(axis, perm), "keepdims": int(keep),
                              "select_last_index": 0})
    out_dt = _out_dtype(outputs)
    if out_dt != np.dtype(np.int64):
        y = ctx.op("Cast", [y], {"to": int(ir_dtype(out_dt))})
    if op.axis is None:
        if keep:
            y = ctx.op("Reshape", [y, ctx.ints([1] * rank)])
        ctx.set(outputs[0], y)
    else:
        ctx.set(outputs[0], y, _reduced_perm(perm, [axis], keep))


# -- shapes ----------------------------------------------------------------------------------
@_register("Reshape")
def reshape(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    shape = [int(d) if d is not None else -1 for d in op.newshape] if isinstance(op.newshape, list | tuple) \
        else [int(op.newshape)]
    if 0 in shape:
        raise ConversionError(f"reshape to a shape with a zero dimension is not supported: {shape}")
    ctx.set(outputs[0], ctx.op("Reshape", [ctx.get(inputs[0]), ctx.ints(shape)]))


@_register("Ravel")
def ravel(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    ctx.set(outputs[0], ctx.op("Reshape", [ctx.get(inputs[0]), ctx.ints([-1])]))


def _transpose_to(ctx: KerasContext, tensor: Any, want: Sequence[int], out: Any) -> None:
    """Keras output = transpose(input, want): one Transpose from however the input is held."""
    x, held = ctx.get_any(tensor)
    t = layout.between(held, want)
    ctx.set(out, ctx.op("Transpose", [x], {"perm": list(t)}) if not layout.is_identity(t)
            else ctx.op("Identity", [x]))


@_register("Transpose")
def transpose(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    axes = list(reversed(range(rank))) if op.axes is None else [int(a) % rank for a in op.axes]
    _transpose_to(ctx, inputs[0], axes, outputs[0])


@_register("Swapaxes")
def swapaxes(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    axes = list(range(rank))
    a, b = int(op.axis1) % rank, int(op.axis2) % rank
    axes[a], axes[b] = axes[b], axes[a]
    _transpose_to(ctx, inputs[0], axes, outputs[0])


@_register("Moveaxis")
def moveaxis(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    src = [int(a) % rank for a in (op.source if isinstance(op.source, list | tuple) else [op.source])]
    dst = [int(a) % rank for a in (op.destination if isinstance(op.destination, list | tuple)
                                   else [op.destination])]
    order = [a for a in range(rank) if a not in src]
    for d, s in sorted(zip(dst, src)):
        order.insert(d, s)
    _transpose_to(ctx, inputs[0], order, outputs[0])


@_register("ExpandDims")
def expand_dims(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    out_rank = len(outputs[0].shape)
    axes = sorted(int(a) % out_rank for a in (op.axis if isinstance(op.axis, list | tuple) else [op.axis]))
    ctx.set(outputs[0], ctx.op("Unsqueeze", [ctx.get(inputs[0]), ctx.ints(axes)]))


@_register("Squeeze")
def squeeze(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    shape = inputs[0].shape
    rank = len(shape)
    if op.axis is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    else:
        axes = sorted(int(a) % rank for a in (op.axis if isinstance(op.axis, list | tuple) else [op.axis]))
    y = ctx.op("Squeeze", [x, ctx.ints(sorted(layout.ir_axis(a, perm) for a in axes))])
    ctx.set(outputs[0], y, drop_axes(perm, axes))


@_register("Concatenate")
def concatenate(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    from portanet.converters.keras.ops.merge import common_inputs

    values, perm = common_inputs(ctx, inputs)
    rank = len(outputs[0].shape)
    axis = layout.ir_axis(int(op.axis) if op.axis is not None else 0, perm)
    if op.axis is None:  # concatenate(axis=None) flattens first
        values = [ctx.op("Reshape", [ctx.get(t), ctx.ints([-1])]) for t in inputs]
        perm, axis = layout.identity(rank), 0
    ctx.set(outputs[0], ctx.op("Concat", values, {"axis": axis}), perm)


@_register("Stack")
def stack(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    rank = len(outputs[0].shape)
    axis = int(op.axis) % rank
    parts = [ctx.op("Unsqueeze", [ctx.get(t), ctx.ints([axis])]) for t in inputs]
    ctx.set(outputs[0], ctx.op("Concat", parts, {"axis": axis}))


@_register("Split")
def split(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    rank = len(inputs[0].shape)
    axis = int(op.axis) % rank
    size = inputs[0].shape[axis]
    if size is None:
        raise ConversionError(f"split along axis {axis} of unknown size is not supported")
    ios = op.indices_or_sections
    if isinstance(ios, int):
        sizes = [size // ios] * ios
    else:
        bounds = [0, *[int(i) for i in ios], size]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    ys = ctx.op("Split", [x, ctx.ints(sizes)], {"axis": layout.ir_axis(axis, perm)}, outputs=len(sizes))
    ys = ys if isinstance(ys, tuple) else (ys,)
    for t, y in zip(outputs, ys):
        ctx.set(t, y, perm)


@_register("Tile")
def tile(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    reps = [int(r) for r in (op.repeats if isinstance(op.repeats, list | tuple) else [op.repeats])]
    out_rank = max(rank, len(reps))
    reps = [1] * (out_rank - len(reps)) + reps
    x = ctx.get(inputs[0])
    if out_rank > rank:
        x = ctx.op("Unsqueeze", [x, ctx.ints(range(out_rank - rank))])
    ctx.set(outputs[0], ctx.op("Tile", [x, ctx.ints(reps)]))


@_register("BroadcastTo")
def broadcast_to(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    shape = [int(d) for d in op.shape]
    ctx.set(outputs[0], ctx.op("Expand", [ctx.get(inputs[0]), ctx.ints(shape)]))


@_register("Flip")
def flip(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    axes = _keras_axes(op.axis, len(inputs[0].shape))
    ir_axes = [layout.ir_axis(a, perm) for a in axes]
    n = len(ir_axes)
    y = ctx.op("Slice", [x, ctx.ints([-1] * n), ctx.ints([_INT64_MIN] * n), ctx.ints(ir_axes), ctx.ints([-1] * n)])
    ctx.set(outputs[0], y, perm)


@_register("Cumsum")
def cumsum(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    if op.axis is None:
        x, perm, axis = ctx.op("Reshape", [ctx.get(inputs[0]), ctx.ints([-1])]), layout.identity(1), 0
    else:
        x, perm = ctx.get_any(inputs[0])
        axis = layout.ir_axis(int(op.axis), perm)
    ctx.set(outputs[0], ctx.op("CumSum", [x, ctx.b.const(np.asarray(axis, dtype=np.int64))]), perm)


# -- slicing ---------------------------------------------------------------------------------
def _key_entries(key: Any, rank: int) -> list[Any]:
    """A ``__getitem__`` key as one entry per input axis (ints, slices) plus ``None`` (new axes)."""
    items = list(key) if isinstance(key, list | tuple) else [key]
    if sum(1 for k in items if k is Ellipsis) > 1:
        raise ConversionError("a slice key with more than one Ellipsis")
    if Ellipsis not in items:
        items.append(Ellipsis)
    used = sum(1 for k in items if k is not None and k is not Ellipsis)
    i = items.index(Ellipsis)
    return items[:i] + [slice(None)] * (rank - used) + items[i + 1:]


@_register("GetItem")
def get_item(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    rank = len(inputs[0].shape)
    entries = _key_entries(a["key"], rank)
    if any(is_tensor(k) for k in entries):
        raise ConversionError("indexing with a tensor is not supported (only ints and slices)")
    has_new = any(k is None for k in entries)
    x, perm = (ctx.get(inputs[0]), layout.identity(rank)) if has_new else ctx.get_any(inputs[0])
    starts, ends, axes, steps, dropped = [], [], [], [], []
    axis = 0
    for k in entries:
        if k is None:
            continue
        if isinstance(k, slice):
            step = 1 if k.step is None else int(k.step)
            if (k.start, k.stop, step) != (None, None, 1):
                starts.append(int(k.start) if k.start is not None else (0 if step > 0 else _INT64_MAX))
                ends.append(int(k.stop) if k.stop is not None else (_INT64_MAX if step > 0 else _INT64_MIN))
                axes.append(layout.ir_axis(axis, perm))
                steps.append(step)
        else:
            i = int(k)
            starts.append(i)
            ends.append(i + 1 if i != -1 else _INT64_MAX)
            axes.append(layout.ir_axis(axis, perm))
            steps.append(1)
            dropped.append(axis)
        axis += 1
    y = x
    if axes:
        y = ctx.op("Slice", [x, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), ctx.ints(steps)])
    if dropped:
        y = ctx.op("Squeeze", [y, ctx.ints(sorted(layout.ir_axis(d, perm) for d in dropped))])
    out_perm = drop_axes(perm, dropped)
    if has_new:
        # new axes are inserted in the Keras order (the value is held in the Keras order here)
        pos, new_axes = 0, []
        for k in entries:
            if k is None:
                new_axes.append(pos)
            if not isinstance(k, int) or isinstance(k, bool):
                pos += 1
        y = ctx.op("Unsqueeze", [y, ctx.ints(new_axes)])
        out_perm = layout.identity(len(outputs[0].shape))
    if y is x:
        y = ctx.op("Identity", [x])
    ctx.set(outputs[0], y, out_perm)


@_register("Pad")
def pad(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    x, perm = ctx.get_any(inputs[0])
    rank = len(inputs[0].shape)
    pw = np.asarray(op.pad_width, dtype=np.int64)
    pw = np.broadcast_to(pw.reshape(-1, 2) if pw.size > 2 or pw.ndim == 2 else pw.reshape(1, -1), (rank, 2))
    # IR axis i holds Keras axis perm[i]: begins of every IR axis, then ends
    pads = [int(pw[p, 0]) for p in perm] + [int(pw[p, 1]) for p in perm]
    modes = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}
    if op.mode not in modes:
        raise ConversionError(f"pad mode '{op.mode}' is not supported; supported: {', '.join(modes)}")
    cv = a.get("constant_values")
    dtype = np_dtype(inputs[0].dtype)
    fill = ctx.b.const(np.asarray(0 if cv is None else cv, dtype=dtype)) if op.mode == "constant" else None
    ctx.set(outputs[0], ctx.op("Pad", [x, ctx.ints(pads), fill], {"mode": modes[op.mode]}), perm)


# -- products --------------------------------------------------------------------------------
@_register("Matmul")
def matmul(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    vals = [Operand(ctx, v) for v in (a["x1"], a["x2"])]
    dtype = _out_dtype(outputs)
    xs = [o.value(ctx, o.rank, layout.identity(o.rank), dtype) for o in vals]
    ctx.set(outputs[0], ctx.op("MatMul", xs))


@_register("Einsum")
def einsum(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    a = bound_args(ctx, op)
    dtype = _out_dtype(outputs)
    vals = [Operand(ctx, v) for v in a["operands"]]
    xs = [o.value(ctx, o.rank, layout.identity(o.rank), dtype) for o in vals]
    ctx.set(outputs[0], ctx.op("Einsum", xs, {"equation": str(op.subscripts).replace(" ", "")}))


# -- images ----------------------------------------------------------------------------------
@_register("Resize")
def resize(ctx: KerasContext, op: Any, inputs: list, outputs: list) -> None:
    if op.crop_to_aspect_ratio or op.pad_to_aspect_ratio or op.antialias:
        raise ConversionError("image resize with antialias / crop_to_aspect_ratio / pad_to_aspect_ratio "
                              "is not supported")
    rank = len(inputs[0].shape)
    if rank != 4:
        raise ConversionError(f"expected a batched 4-D image, received rank {rank}")
    perm = layout.for_data_format(op.data_format, rank)
    x = ctx.get(inputs[0], perm)
    shape = ctx.op("Shape", [x], {"start": 0, "end": 2})
    sizes = ctx.op("Concat", [shape, ctx.ints([int(s) for s in op.size])], {"axis": 0})
    if op.interpolation == "bilinear":
        attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    elif op.interpolation == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                 "nearest_mode": "round_prefer_ceil"}
    else:
        raise ConversionError(f"expected interpolation 'bilinear' or 'nearest', received '{op.interpolation}'")
    ctx.set(outputs[0], ctx.op("Resize", [x, None, None, sizes], attrs), perm)
