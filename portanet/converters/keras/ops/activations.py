"""Built-in Keras activations, as a table name -> lowering, and the activation layers."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError

Lowering = Callable[[KerasContext, ir.Value, int], ir.Value]
#: activation name -> fn(ctx, x, channel_axis_in_ir) (the axis matters for softmax only)
ACTIVATIONS: dict[str, Lowering] = {}

# TensorFlow's SELU constants (tf.nn.selu), kept at full precision
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def activation(*names: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            ACTIVATIONS[n] = fn
        return fn

    return deco


def _simple(onnx_op: str, *names: str, **attrs: Any) -> None:
    def lower(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
        return ctx.op(onnx_op, [x], attrs or None)

    for n in names:
        ACTIVATIONS[n] = lower


_simple("Relu", "relu")
_simple("Sigmoid", "sigmoid")
_simple("Tanh", "tanh")
_simple("Softsign", "softsign")
_simple("Softplus", "softplus")
_simple("Exp", "exponential")
_simple("Identity", "linear")
_simple("HardSwish", "hard_swish", "hard_silu")
_simple("Selu", "selu", alpha=SELU_ALPHA, gamma=SELU_SCALE)
_simple("Elu", "elu", alpha=1.0)
_simple("LeakyRelu", "leaky_relu", alpha=0.2)
_simple("Mish", "mish")


@activation("relu6")
def _relu6(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    return ctx.op("Clip", [x, ctx.const(0.0), ctx.const(6.0)])


@activation("hard_sigmoid")
def _hard_sigmoid(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    # Keras: relu6(x + 3) / 6, computed in that order to match TensorFlow bit for bit
    y = ctx.op("Add", [x, ctx.const(3.0)])
    y = ctx.op("Clip", [y, ctx.const(0.0), ctx.const(6.0)])
    return ctx.op("Div", [y, ctx.const(6.0)])


@activation("swish", "silu")
def _silu(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    return ctx.op("Mul", [x, ctx.op("Sigmoid", [x])])


@activation("softmax")
def _softmax(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    return ctx.op("Softmax", [x], {"axis": axis})


@activation("log_softmax")
def _log_softmax(ctx: KerasContext, x: ir.Value, axis: int) -> ir.Value:
    return ctx.op("LogSoftmax", [x], {"axis": axis})


def gelu(ctx: KerasContext, x: ir.Value, approximate: bool) -> ir.Value:
    """GELU: exact ``0.5 x (1 + erf(x / sqrt 2))`` or the tanh approximation (opset 18 has no Gelu)."""
    half_x = ctx.op("Mul", [x, ctx.const(0.5)])
    if approximate:
        # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [x3, ctx.const(0.044715)])])
        t = ctx.op("Tanh", [ctx.op("Mul", [inner, ctx.const(math.sqrt(2.0 / math.pi))])])
    else:
        t = ctx.op("Erf", [ctx.op("Div", [x, ctx.const(math.sqrt(2.0))])])
    return ctx.op("Mul", [half_x, ctx.op("Add", [t, ctx.const(1.0)])])


ACTIVATIONS["gelu"] = lambda ctx, x, axis: gelu(ctx, x, approximate=False)
ACTIVATIONS["gelu_approximate"] = lambda ctx, x, axis: gelu(ctx, x, approximate=True)


#: keyword arguments of partially applied activations -> the lowering that honours them
_PARTIALS: dict[tuple[str, str], Callable[[Any], Lowering]] = {
    ("gelu", "approximate"): lambda v: ACTIVATIONS["gelu_approximate" if v else "gelu"],
    ("elu", "alpha"): lambda v: lambda ctx, x, axis: ctx.op("Elu", [x], {"alpha": float(v)}),
    ("leaky_relu", "negative_slope"): lambda v: lambda ctx, x, axis: ctx.op("LeakyRelu", [x], {"alpha": float(v)}),
}


def activation_name(fn: Any) -> str:
    """The registered name of a Keras activation function (or string)."""
    if fn is None:
        return "linear"
    if isinstance(fn, str):
        return fn
    if isinstance(fn, functools.partial):
        return activation_name(fn.func)
    return getattr(fn, "__name__", type(fn).__name__)


def _lowering(fn: Any) -> Lowering:
    name = activation_name(fn)
    if name not in ACTIVATIONS:
        raise ConversionError(f"activation '{name}' is not supported; supported: {', '.join(sorted(ACTIVATIONS))}")
    if isinstance(fn, functools.partial):
        if fn.args:
            raise ConversionError(f"activation '{name}' with positional arguments is not supported")
        lower = ACTIVATIONS[name]
        for key, value in fn.keywords.items():
            if (name, key) not in _PARTIALS:
                raise ConversionError(f"activation '{name}' with argument {key}={value!r} is not supported")
            lower = _PARTIALS[(name, key)](value)
        return lower
    return ACTIVATIONS[name]


def apply(ctx: KerasContext, fn: Any, x: ir.Value, axis: int = -1) -> ir.Value:
    """Apply the Keras activation ``fn`` to ``x``; ``axis`` is softmax's axis in the IR."""
    if activation_name(fn) == "linear":
        return x
    return _lowering(fn)(ctx, x, axis)


def apply_to_output(ctx: KerasContext, fn: Any, x: ir.Value, perm: layout.Perm) -> ir.Value:
    """Apply a layer's fused activation on a value held with ``perm`` (softmax on Keras' last axis)."""
    return apply(ctx, fn, x, layout.ir_axis(-1, perm))


# -- activation layers --------------------------------------------------------------------
@HANDLERS.register("Activation")
def activation_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    y = apply_to_output(ctx, layer.activation, x, perm)
    if y is x:
        y = ctx.op("Identity", [x])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("ReLU")
def relu_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    max_value = layer.max_value
    slope = float(layer.negative_slope or 0.0)
    threshold = float(layer.threshold or 0.0)
    if slope == 0.0 and threshold == 0.0:
        y = ctx.op("Relu", [x])
    elif threshold == 0.0:
        y = ctx.op("LeakyRelu", [x], {"alpha": slope})
    else:
        # x >= threshold: x;  otherwise slope * (x - threshold)
        below = ctx.op("Mul", [ctx.op("Sub", [x, ctx.const(threshold)]), ctx.const(slope)])
        keep = ctx.op("GreaterOrEqual", [x, ctx.const(threshold)])
        y = ctx.op("Where", [keep, x, below])
    if max_value is not None:
        y = ctx.op("Min", [y, ctx.const(float(max_value))])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("LeakyReLU")
def leaky_relu_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    ctx.set(outputs[0], ctx.op("LeakyRelu", [x], {"alpha": float(layer.negative_slope)}), perm)


@HANDLERS.register("ELU")
def elu_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    ctx.set(outputs[0], ctx.op("Elu", [x], {"alpha": float(layer.alpha)}), perm)


@HANDLERS.register("Softmax")
def softmax_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    if len(inputs) > 1:
        raise ConversionError("Softmax with a mask input is not supported")
    x, perm = ctx.get_any(inputs[0])
    axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
    if len(axes) != 1:
        raise ConversionError(f"expected a single softmax axis, received {list(axes)}")
    ctx.set(outputs[0], ctx.op("Softmax", [x], {"axis": layout.ir_axis(int(axes[0]), perm)}), perm)


@HANDLERS.register("PReLU")
def prelu_layer(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    alpha = to_numpy(layer.alpha, np.float32)  # input_shape[1:] with 1 on shared axes
    # (1, *alpha.shape) transposed like the IR value, then the batch axis dropped
    slope = np.transpose(alpha.reshape((1, *alpha.shape)), perm)[0]
    ctx.set(outputs[0], ctx.op("PRelu", [x, ctx.weight(layer, "alpha", slope)]), perm)
