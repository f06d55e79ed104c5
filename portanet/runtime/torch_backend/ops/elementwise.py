"""Element-wise arithmetic, comparison, logic, Where, Identity and Cast."""

from __future__ import annotations

import functools

import torch

from portanet.runtime.torch_backend.ops._util import attr, in_dtype, is_float_input, torch_dtype
from portanet.runtime.torch_backend.registry import register

_UNARY = {
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
}

_BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}


def _reg_unary(op_type: str, fn) -> None:
    register(op_type)(lambda ctx, node, x: ctx.call(fn, x))


def _reg_binary(op_type: str, fn) -> None:
    register(op_type)(lambda ctx, node, a, b: ctx.call(fn, a, b))


for _op, _fn in _UNARY.items():
    _reg_unary(_op, _fn)
for _op, _fn in _BINARY.items():
    _reg_binary(_op, _fn)


def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Div: true division for floats, truncation toward zero for integers."""
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@register("Div")
def _div(ctx, node, a, b):
    if is_float_input(node, 0, a):
        return ctx.call(torch.div, a, b)
    return ctx.call(div, a, b)


def mod(a: torch.Tensor, b: torch.Tensor, fmod: int) -> torch.Tensor:
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@register("Mod")
def _mod(ctx, node, a, b):
    return ctx.call(mod, a, b, int(attr(node, "fmod", 0)))


def pow_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """ONNX Pow: the result has the base's type (torch would promote int ** float to float)."""
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)


@register("Pow")
def _pow(ctx, node, a, b):
    c = ctx.const(b)
    if c is not None and c.numel() == 1 and is_float_input(node, 0, a):
        # x ** 2 with a constant scalar exponent: a Python number keeps torch's fast path
        return ctx.call(torch.pow, a, c.item())
    return ctx.call(pow_, a, b)


def max_(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.maximum, xs)


def min_(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.minimum, xs)


def sum_(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.add, xs)


def mean_(*xs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.add, xs) / len(xs)


for _op, _fn in {"Max": max_, "Min": min_, "Sum": sum_, "Mean": mean_}.items():
    register(_op)(functools.partial(lambda fn, ctx, node, *xs: ctx.call(fn, *xs), _fn))


@register("Where")
def where(ctx, node, cond, x, y):
    return ctx.call(torch.where, cond, x, y)


@register("Identity")
def identity(ctx, node, x):
    return x


_FLOAT8 = {torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.float8_e5m2fnuz}
#: smallest magnitude that rounds past the largest finite value of each float8 type
_FLOAT8_OVERFLOW = {torch.float8_e4m3fn: 464.0, torch.float8_e4m3fnuz: 248.0,
                    torch.float8_e5m2: 61440.0, torch.float8_e5m2fnuz: 61440.0}


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # float -> int truncates toward zero in both ONNX and torch
    return x.to(dtype)


def cast_float8(x: torch.Tensor, dtype: torch.dtype, saturate: int) -> torch.Tensor:
    """ONNX Cast to float8: ``saturate`` clamps out-of-range values (and inf) to the largest
    finite value; otherwise they become inf (e5m2) or NaN (the types without inf)."""
    big = torch.finfo(dtype).max
    if saturate:
        return x.clamp(-big, big).to(dtype)  # NaN stays NaN
    over = x.abs() > _FLOAT8_OVERFLOW[dtype]
    if dtype == torch.float8_e5m2:
        special = torch.where(x > 0, torch.full_like(x, float("inf")), torch.full_like(x, float("-inf")))
    else:
        special = torch.full_like(x, float("nan"))
    return torch.where(over, special, x).to(dtype)


@register("Cast")
def _cast(ctx, node, x):
    dtype = torch_dtype(int(attr(node, "to")))
    if in_dtype(node, 0) == dtype:
        return x
    if dtype in _FLOAT8 and in_dtype(node, 0) not in _FLOAT8:
        return ctx.call(cast_float8, x, dtype, int(attr(node, "saturate", 1)))
    return ctx.call(cast, x, dtype)


def cast_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x.to(like.dtype)


@register("CastLike")
def _cast_like(ctx, node, x, like):
    dtype = in_dtype(node, 1)
    if dtype in _FLOAT8 and in_dtype(node, 0) not in _FLOAT8:
        return ctx.call(cast_float8, x, dtype, int(attr(node, "saturate", 1)))
    return ctx.call(cast_like, x, like)
