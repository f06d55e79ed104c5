"""Elementwise ops: binary (elemwise_* / broadcast_* / legacy _Plus ...), scalar forms,
unary math, clip, Cast, zeros_like/ones_like and the inference identities."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS
from portanet.errors import ConversionError

# elemwise_* requires equal shapes and broadcast_* broadcasts like numpy; ONNX broadcasting
# covers both (a valid MXNet graph never relies on elemwise_* failing)
_BINARY = {
    "Add": ("elemwise_add", "_Plus", "_plus", "_add", "broadcast_add", "broadcast_plus", "_grad_add"),
    "Sub": ("elemwise_sub", "_Minus", "_minus", "_sub", "broadcast_sub", "broadcast_minus"),
    "Mul": ("elemwise_mul", "_Mul", "_mul", "broadcast_mul"),
    "Div": ("elemwise_div", "_Div", "_div", "broadcast_div"),
    "Max": ("_maximum", "_Maximum", "broadcast_maximum"),
    "Min": ("_minimum", "_Minimum", "broadcast_minimum"),
    "Pow": ("_power", "_Power", "broadcast_power"),
}


def _binary(onnx_op: str):
    def handler(n: NodeCtx) -> ir.Value:
        return n.op(onnx_op, [n.input(0), n.input(1)])

    return handler


for _onnx_op, _names in _BINARY.items():
    HANDLERS.register(*_names)(_binary(_onnx_op))


@HANDLERS.register("add_n", "ElementWiseSum")
def add_n(n: NodeCtx) -> ir.Value:
    return n.op("Sum", n.inputs())


# scalar forms: (ONNX op, scalar on the left?)
_SCALAR = {
    ("Add", False): ("_plus_scalar", "_PlusScalar"),
    ("Sub", False): ("_minus_scalar", "_MinusScalar"),
    ("Sub", True): ("_rminus_scalar", "_RMinusScalar"),
    ("Mul", False): ("_mul_scalar", "_MulScalar"),
    ("Div", False): ("_div_scalar", "_DivScalar"),
    ("Div", True): ("_rdiv_scalar", "_RDivScalar"),
    ("Pow", False): ("_power_scalar", "_PowerScalar"),
    ("Pow", True): ("_rpower_scalar", "_RPowerScalar"),
    ("Max", False): ("_maximum_scalar", "_MaximumScalar"),
    ("Min", False): ("_minimum_scalar", "_MinimumScalar"),
}


def _scalar_op(onnx_op: str, reverse: bool):
    def handler(n: NodeCtx) -> ir.Value:
        x = n.input(0)
        # the scalar is cast to the tensor's dtype, as MXNet does
        s = n.scalar(n.attrs.float("scalar"), x)
        return n.op(onnx_op, [s, x] if reverse else [x, s])

    return handler


for (_onnx_op, _reverse), _names in _SCALAR.items():
    HANDLERS.register(*_names)(_scalar_op(_onnx_op, _reverse))


_UNARY = {
    "relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "abs": "Abs", "negative": "Neg", "reciprocal": "Reciprocal", "floor": "Floor", "ceil": "Ceil",
    "erf": "Erf", "sin": "Sin", "cos": "Cos", "softsign": "Softsign", "sign": "Sign",
}


def _unary(onnx_op: str):
    def handler(n: NodeCtx) -> ir.Value:
        return n.op(onnx_op, [n.input(0)])

    return handler


for _name, _onnx_op in _UNARY.items():
    HANDLERS.register(_name)(_unary(_onnx_op))


@HANDLERS.register("square")
def square(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    return n.op("Mul", [x, x])


@HANDLERS.register("rsqrt")
def rsqrt(n: NodeCtx) -> ir.Value:
    return n.op("Reciprocal", [n.op("Sqrt", [n.input(0)])])


@HANDLERS.register("clip")
def clip(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    lo, hi = n.attrs.float("a_min"), n.attrs.float("a_max")
    return n.op("Clip", [x, n.scalar(lo, x), n.scalar(hi, x)])


_CAST = {
    "float32": ir.DataType.FLOAT, "float64": ir.DataType.DOUBLE, "float16": ir.DataType.FLOAT16,
    "uint8": ir.DataType.UINT8, "int8": ir.DataType.INT8, "int32": ir.DataType.INT32,
    "int64": ir.DataType.INT64, "bool": ir.DataType.BOOL,
}


@HANDLERS.register("Cast", "cast", "amp_cast")
def cast(n: NodeCtx) -> ir.Value:
    dtype = n.attrs.str("dtype")
    if dtype not in _CAST:
        raise ConversionError(f"expected dtype one of {', '.join(_CAST)}, received '{dtype}'")
    return n.op("Cast", [n.input(0)], {"to": _CAST[dtype]})


def _fill_like(value: float):
    def handler(n: NodeCtx) -> ir.Value:
        x = n.input(0)
        fill = ir.tensor(np.asarray([value], dtype=n.conv.dtype(x)))
        return n.op("ConstantOfShape", [n.conv.shape_value(x)], {"value": fill})

    return handler


HANDLERS.register("zeros_like")(_fill_like(0.0))
HANDLERS.register("ones_like")(_fill_like(1.0))


@HANDLERS.register("_copy", "identity", "BlockGrad", "stop_gradient", "MakeLoss", "make_loss")
def identity(n: NodeCtx) -> ir.Value:
    return n.op("Identity", [n.input(0)])


@HANDLERS.register("Dropout")
def dropout(n: NodeCtx) -> ir.Value:
    if n.attrs.str("mode", "training") == "always":
        n.warn("Dropout mode=always drops at inference in MXNet; converted as identity")
    return n.op("Identity", [n.input(0)])
