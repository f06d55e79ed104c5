"""Activations and (log-)softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register


def _unary(op_type: str, fn) -> None:
    register(op_type)(lambda ctx, node, x: ctx.call(fn, x))


for _op, _fn in {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softsign": F.softsign,
    "HardSwish": F.hardswish,
    "Erf": torch.erf,
    "Mish": F.mish,
}.items():
    _unary(_op, _fn)


@register("LeakyRelu")
def leaky_relu(ctx, node, x):
    return ctx.call(F.leaky_relu, x, float(attr(node, "alpha", 0.01)))


def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # ONNX broadcasts the slope unidirectionally to x (often (C, 1, 1) for NCHW)
    return torch.where(x < 0, x * slope, x)


def prelu_channel(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # opset < 7: a 1-D slope applies per channel (axis 1)
    if slope.dim() == 1 and x.dim() > 2:
        slope = slope.reshape(-1, *[1] * (x.dim() - 2))
    return torch.where(x < 0, x * slope, x)


@register("PRelu")
def _prelu(ctx, node, x, slope):
    return ctx.call(prelu_channel if ctx.opset < 7 else prelu, x, slope)


@register("Elu")
def elu(ctx, node, x):
    return ctx.call(F.elu, x, float(attr(node, "alpha", 1.0)))


@register("Celu")
def celu(ctx, node, x):
    return ctx.call(F.celu, x, float(attr(node, "alpha", 1.0)))


def selu(x: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    # gamma * (x if x > 0 else alpha * (exp(x) - 1)) == gamma * elu(x, alpha)
    return gamma * F.elu(x, alpha)


@register("Selu")
def _selu(ctx, node, x):
    alpha = float(attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(attr(node, "gamma", 1.05070102214813232421875))
    return ctx.call(selu, x, alpha, gamma)


def hard_sigmoid(x: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@register("HardSigmoid")
def _hard_sigmoid(ctx, node, x):
    return ctx.call(hard_sigmoid, x, float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5)))


def thresholded_relu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


@register("ThresholdedRelu")
def _thresholded_relu(ctx, node, x):
    return ctx.call(thresholded_relu, x, float(attr(node, "alpha", 1.0)))


@register("Softplus")
def softplus(ctx, node, x):
    # torch's threshold=20 switches to the identity where exp(-x) < 2e-9 (below float32 eps)
    return ctx.call(F.softplus, x)


@register("Gelu")
def gelu(ctx, node, x):
    return ctx.call(F.gelu, x, approximate=attr(node, "approximate", "none"))


def clip(x: torch.Tensor, lo, hi) -> torch.Tensor:
    # ONNX: min(max(x, lo), hi); when lo > hi every element becomes hi (same as torch.clamp)
    if lo is None and hi is None:
        return x
    return torch.clamp(x, lo, hi)


@register("Clip", static_inputs=(1, 2))
def _clip(ctx, node, x, lo=None, hi=None):
    if ctx.opset < 11:
        lo, hi = attr(node, "min", None), attr(node, "max", None)
        return ctx.call(clip, x, lo, hi)
    # constant bounds become Python numbers (cheapest torch.clamp)
    lo_c = ctx.const(lo)
    hi_c = ctx.const(hi)
    lo = lo_c.item() if lo_c is not None else lo
    hi = hi_c.item() if hi_c is not None else hi
    return ctx.call(clip, x, lo, hi)


def _coerced_2d(fn):
    # opset < 13: (log)softmax over all axes from `axis` on, the input seen as 2-D
    def run(x: torch.Tensor, axis: int) -> torch.Tensor:
        a = axis % x.dim() if x.dim() else 0
        flat = x.reshape(*x.shape[:a], -1) if a else x.reshape(1, -1)
        return fn(flat, -1).reshape(x.shape)

    return run


def softmax_2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    return _coerced_2d(torch.softmax)(x, axis)


def log_softmax_2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    return _coerced_2d(torch.log_softmax)(x, axis)


def hardmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    idx = torch.argmax(x, dim=axis, keepdim=True)
    return torch.zeros_like(x).scatter_(axis, idx, 1.0)


def hardmax_2d(x: torch.Tensor, axis: int) -> torch.Tensor:
    return _coerced_2d(hardmax)(x, axis)


def _softmax_family(op_type: str, fn, fn_2d) -> None:
    @register(op_type)
    def lower(ctx, node, x):
        if ctx.opset < 13:
            return ctx.call(fn_2d, x, int(attr(node, "axis", 1)))
        return ctx.call(fn, x, int(attr(node, "axis", -1)))


_softmax_family("Softmax", torch.softmax, softmax_2d)
_softmax_family("LogSoftmax", torch.log_softmax, log_softmax_2d)
_softmax_family("Hardmax", hardmax, hardmax_2d)
