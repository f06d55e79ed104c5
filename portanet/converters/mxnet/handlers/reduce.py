"""Reductions: mean, sum, max, min, prod with axis / exclude / keepdims."""

from __future__ import annotations

import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS

_REDUCE = {
    "ReduceMean": ("mean",),
    "ReduceSum": ("sum", "sum_axis"),
    "ReduceMax": ("max", "max_axis"),
    "ReduceMin": ("min", "min_axis"),
    "ReduceProd": ("prod",),
}


def _reduce(onnx_op: str):
    def handler(n: NodeCtx) -> ir.Value:
        a = n.attrs
        x = n.input(0)
        axes = a.tuple("axis", None)
        keepdims = a.bool("keepdims", False)
        if a.bool("exclude", False) and axes is not None:
            # exclude=True reduces over every axis NOT listed
            rank = n.rank(x)
            listed = {ax % rank for ax in axes}
            axes = tuple(i for i in range(rank) if i not in listed)
            if not axes:
                return n.op("Identity", [x])
        if axes is None:
            y = n.op(onnx_op, [x], {"keepdims": int(keepdims)})
            if not keepdims:
                # a full reduction gives shape (1,) in MXNet, not a 0-d scalar
                y = n.op("Reshape", [y, n.ints([1])])
            return y
        return n.op(onnx_op, [x, n.ints(axes)], {"keepdims": int(keepdims)})

    return handler


for _onnx_op, _names in _REDUCE.items():
    HANDLERS.register(*_names)(_reduce(_onnx_op))
