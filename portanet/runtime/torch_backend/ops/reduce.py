"""Reductions (ReduceMean/Sum/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare), ArgMax/ArgMin."""

from __future__ import annotations

from typing import Any

import torch

from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register


def _sum(x, dims, keep):
    return torch.sum(x, dim=dims, keepdim=keep)


def _mean(x, dims, keep):
    return torch.mean(x, dim=dims, keepdim=keep)


def _max(x, dims, keep):
    return torch.amax(x, dim=dims, keepdim=keep)


def _min(x, dims, keep):
    return torch.amin(x, dim=dims, keepdim=keep)


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _l1(x, dims, keep):
    return torch.sum(torch.abs(x), dim=dims, keepdim=keep)


def _l2(x, dims, keep):
    return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))


def _log_sum(x, dims, keep):
    return torch.log(torch.sum(x, dim=dims, keepdim=keep))


def _log_sum_exp(x, dims, keep):
    return torch.logsumexp(x, dim=dims, keepdim=keep)


def _sum_square(x, dims, keep):
    return torch.sum(x * x, dim=dims, keepdim=keep)


_REDUCERS = {
    "ReduceSum": _sum,
    "ReduceMean": _mean,
    "ReduceMax": _max,
    "ReduceMin": _min,
    "ReduceProd": _prod,
    "ReduceL1": _l1,
    "ReduceL2": _l2,
    "ReduceLogSum": _log_sum,
    "ReduceLogSumExp": _log_sum_exp,
    "ReduceSumSquare": _sum_square,
}
#: opset in which each reduction's axes moved from an attribute to an input
_AXES_INPUT_SINCE = {"ReduceSum": 13}


def reduce(x: torch.Tensor, axes: Any, keepdims: int, noop_with_empty_axes: int, kind: str) -> torch.Tensor:
    if axes is not None and isinstance(axes, torch.Tensor):
        axes = [int(a) for a in axes.reshape(-1).tolist()]
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    dims = tuple(sorted({a % x.dim() for a in axes})) if x.dim() else ()
    if not dims:
        return x
    if x.numel() == 0 and kind in ("ReduceMax", "ReduceMin"):
        # ONNX: the max/min of nothing is -inf/+inf (torch raises)
        shape = [1 if i in dims else s for i, s in enumerate(x.shape)] if keepdims else [
            s for i, s in enumerate(x.shape) if i not in dims
        ]
        if x.dtype == torch.bool:
            fill = kind == "ReduceMin"  # all() of nothing is True, any() is False
        elif x.is_floating_point():
            fill = float("-inf") if kind == "ReduceMax" else float("inf")
        else:
            info = torch.iinfo(x.dtype)
            fill = info.min if kind == "ReduceMax" else info.max
        return torch.full(shape, fill, dtype=x.dtype, device=x.device)
    return _REDUCERS[kind](x, dims, bool(keepdims))


def _register(kind: str) -> None:
    @register(kind)
    def lower(ctx, node, x, axes=None):
        keep = int(attr(node, "keepdims", 1))
        noop = int(attr(node, "noop_with_empty_axes", 0))
        if ctx.opset < _AXES_INPUT_SINCE.get(kind, 18):
            axes = attr(node, "axes")
        elif axes is not None and ctx.const(axes) is not None:
            axes = [int(a) for a in ctx.const(axes).reshape(-1).tolist()]
        return ctx.call(reduce, x, axes, keep, noop, kind)


for _kind in _REDUCERS:
    _register(_kind)


def arg_reduce(x: torch.Tensor, axis: int, keepdims: int, select_last_index: int, largest: bool) -> torch.Tensor:
    fn = torch.argmax if largest else torch.argmin
    if select_last_index:
        # ties -> the last index: search the flipped axis, map back
        flipped = fn(torch.flip(x, dims=[axis]), dim=axis, keepdim=bool(keepdims))
        return x.shape[axis] - 1 - flipped
    return fn(x, dim=axis, keepdim=bool(keepdims))


@register("ArgMax")
def argmax(ctx, node, x):
    return ctx.call(
        arg_reduce, x, int(attr(node, "axis", 0)), int(attr(node, "keepdims", 1)),
        int(attr(node, "select_last_index", 0)), True,
    )


@register("ArgMin")
def argmin(ctx, node, x):
    return ctx.call(
        arg_reduce, x, int(attr(node, "axis", 0)), int(attr(node, "keepdims", 1)),
        int(attr(node, "select_last_index", 0)), False,
    )
