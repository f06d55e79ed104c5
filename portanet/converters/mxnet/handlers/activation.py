"""Activation, LeakyReLU and the softmax family."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS
from portanet.errors import ConversionError

_ACTIVATIONS = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "softrelu": "Softplus",  # log(1 + e^x)
    "softsign": "Softsign",  # x / (1 + |x|)
}


@HANDLERS.register("Activation")
def activation(n: NodeCtx) -> ir.Value:
    act = n.attrs.str("act_type", "relu")
    if act not in _ACTIVATIONS:
        raise ConversionError(f"expected act_type one of {', '.join(_ACTIVATIONS)}, received '{act}'")
    return n.op(_ACTIVATIONS[act], [n.input(0)])


def _gelu(n: NodeCtx, x: ir.Value) -> ir.Value:
    # the exact erf form: 0.5 x (1 + erf(x / sqrt 2))
    erf = n.op("Erf", [n.op("Div", [x, n.scalar(math.sqrt(2.0), x)])])
    half = n.op("Mul", [x, n.scalar(0.5, x)])
    return n.op("Mul", [half, n.op("Add", [erf, n.scalar(1.0, x)])])


@HANDLERS.register("LeakyReLU")
def leaky_relu(n: NodeCtx) -> ir.Value | list[ir.Value]:
    a = n.attrs
    x = n.input(0)
    act = a.str("act_type", "leaky")
    slope = a.float("slope", 0.25)
    if act == "leaky":
        return n.op("LeakyRelu", [x], {"alpha": slope})
    if act == "elu":
        return n.op("Elu", [x], {"alpha": slope})  # slope * (e^x - 1) for x < 0
    if act == "selu":
        return n.op("Selu", [x])  # the standard constants
    if act == "gelu":
        return _gelu(n, x)
    if act == "rrelu":
        # at inference rrelu is leaky with the mean of its slope range
        lower, upper = a.float("lower_bound", 0.125), a.float("upper_bound", 0.334)
        y = n.op("LeakyRelu", [x], {"alpha": (lower + upper) / 2})
        # rrelu has a second visible output, the mask, which inference leaves at zero
        zero = ir.tensor(np.zeros(1, dtype=np.float32))
        return [y, n.op("ConstantOfShape", [n.conv.shape_value(x)], {"value": zero})]
    if act == "prelu":
        # gamma (C,) or (1,) broadcasts over axis 1: reshape to (C, 1, ..., 1)
        gamma = n.weight(1)
        rank = n.rank(x)
        if rank > 2:
            gamma = n.op("Reshape", [gamma, n.ints([-1] + [1] * (rank - 2))])
        return n.op("PRelu", [x, gamma])
    raise ConversionError(f"expected act_type leaky, prelu, elu, selu, gelu or rrelu, received '{act}'")


def _softmax_flat(n: NodeCtx, x: ir.Value, op: str = "Softmax") -> ir.Value:
    """Softmax over all non-batch dims, output in the input's shape."""
    if n.rank(x) == 2:
        return n.op(op, [x], {"axis": 1})
    # (N, C, H, W) -> (N, C*H*W) -> softmax -> back
    flat = n.op("Flatten", [x], {"axis": 1})
    y = n.op(op, [flat], {"axis": 1})
    return n.op("Reshape", [y, n.conv.shape_value(x)])


@HANDLERS.register("SoftmaxOutput", "Softmax")
def softmax_output(n: NodeCtx) -> ir.Value:
    # a training head: the label input is dropped
    a = n.attrs
    x = n.input(0)
    if a.bool("preserve_shape", False):
        return n.op("Softmax", [x], {"axis": -1})
    if a.bool("multi_output", False):
        return n.op("Softmax", [x], {"axis": 1})
    return _softmax_flat(n, x)


@HANDLERS.register("SoftmaxActivation")
def softmax_activation(n: NodeCtx) -> ir.Value:
    mode = n.attrs.str("mode", "instance")
    if mode not in ("instance", "channel"):
        raise ConversionError(f"expected mode instance or channel, received '{mode}'")
    # instance: the last axis (MXNet flattens to (prod(leading), last)); channel: axis 1
    return n.op("Softmax", [n.input(0)], {"axis": -1 if mode == "instance" else 1})


def _softmax_axis(n: NodeCtx, op: str) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    if a.bool("use_length", False):
        raise ConversionError("softmax with use_length=True is not supported")
    temperature = a.float("temperature", None)
    if temperature is not None and temperature != 1.0:
        x = n.op("Div", [x, n.scalar(temperature, x)])
    return n.op(op, [x], {"axis": a.int("axis", -1)})


@HANDLERS.register("softmax")
def softmax(n: NodeCtx) -> ir.Value:
    return _softmax_axis(n, "Softmax")


@HANDLERS.register("log_softmax")
def log_softmax(n: NodeCtx) -> ir.Value:
    return _softmax_axis(n, "LogSoftmax")


@HANDLERS.register("LogisticRegressionOutput")
def logistic_regression_output(n: NodeCtx) -> ir.Value:
    return n.op("Sigmoid", [n.input(0)])  # label dropped


@HANDLERS.register("LinearRegressionOutput", "MAERegressionOutput")
def linear_regression_output(n: NodeCtx) -> ir.Value:
    return n.op("Identity", [n.input(0)])  # label dropped
