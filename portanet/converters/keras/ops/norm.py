"""BatchNormalization, LayerNormalization (incl. rms_scaling), RMSNormalization,
GroupNormalization and UnitNormalization."""

from __future__ import annotations

from typing import Any

import numpy as np

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError
from portanet.ir.frozen import mark_frozen


def _axes(axis: Any, rank: int) -> list[int]:
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


def _image_perm(rank: int, axis: int) -> layout.Perm:
    """Hold BatchNorm inputs so the normalized axis is the IR's axis 1 (channels-first)."""
    if axis == rank - 1:
        return layout.to_channels_first(rank)
    if axis == 1:
        return layout.identity(rank)
    return (0, axis, *[a for a in range(1, rank) if a != axis])


@HANDLERS.register("BatchNormalization")
def batch_norm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    axes = _axes(layer.axis, rank)
    if len(axes) != 1:
        raise ConversionError(f"expected one normalized axis, received {axes}")
    if getattr(layer, "renorm", False):
        raise ConversionError("batch renormalization is not supported")
    mean = to_numpy(layer.moving_mean, np.float32)
    var = to_numpy(layer.moving_variance, np.float32)
    gamma = to_numpy(layer.gamma, np.float32) if layer.scale else np.ones_like(mean)
    beta = to_numpy(layer.beta, np.float32) if layer.center else np.zeros_like(mean)
    perm = _image_perm(rank, axes[0]) if rank >= 2 else layout.identity(rank)
    # the layer's own input perm is used when it already puts the axis at 1 (no Transpose)
    cur = ctx.perm_of(inputs[0])
    if rank >= 2 and layout.ir_axis(axes[0], cur) == 1:
        perm = cur
    x = ctx.get(inputs[0], perm)
    w = [ctx.weight(layer, k, a) for k, a in
         (("gamma", gamma), ("beta", beta), ("moving_mean", mean), ("moving_variance", var))]
    # scale=False / center=False: the unit scale and zero shift are constants, not weights
    for value, has in ((w[0], layer.scale), (w[1], layer.center)):
        if not has:
            mark_frozen(value, "keras BatchNormalization without scale/center")
    y = ctx.op("BatchNormalization", [x, *w], {"epsilon": float(layer.epsilon)})
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("LayerNormalization")
def layer_norm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    axes = _axes(layer.axis, rank)
    if getattr(layer, "rms_scaling", False):
        layer_norm_rms(ctx, layer, inputs, outputs)
        return
    x, perm = ctx.get_any(inputs[0])
    ir_axes = sorted(layout.ir_axis(a, perm) for a in axes)
    if ir_axes != list(range(rank - len(axes), rank)):
        # the normalized axes must be trailing in the IR: use the Keras order
        perm = layout.identity(rank)
        x = ctx.get(inputs[0], perm)
        ir_axes = axes
        if ir_axes != list(range(rank - len(axes), rank)):
            raise ConversionError(f"expected trailing normalized axes, received {axes} of rank {rank}")
    # gamma/beta have the normalized axes' sizes, in Keras axis order; put them in IR order
    norm_shape = [inputs[0].shape[a] for a in axes]
    order = [axes.index(perm[a]) for a in ir_axes]

    def param(var: Any, default: float) -> np.ndarray:
        arr = to_numpy(var, np.float32) if var is not None else np.full(norm_shape, default, np.float32)
        return np.ascontiguousarray(np.transpose(arr.reshape(norm_shape), order))

    gamma = param(layer.gamma if layer.scale else None, 1.0)
    beta = param(layer.beta if layer.center else None, 0.0)
    y = ctx.op("LayerNormalization", [x, ctx.weight(layer, "gamma", gamma), ctx.weight(layer, "beta", beta)],
               {"axis": ir_axes[0], "epsilon": float(layer.epsilon)})
    ctx.set(outputs[0], y, perm)


def _rsqrt(ctx: KerasContext, x: Any) -> Any:
    return ctx.op("Reciprocal", [ctx.op("Sqrt", [x])])


def _normalized_axes(ctx: KerasContext, tensor: Any, axis: Any) -> tuple[Any, layout.Perm, list[int], list[int]]:
    """The input in the layout it was produced in, its Keras axes and where they are in the IR."""
    rank = len(tensor.shape)
    axes = _axes(axis, rank)
    x, perm = ctx.get_any(tensor)
    return x, perm, axes, sorted(layout.ir_axis(a, perm) for a in axes)


def _scale_param(ctx: KerasContext, layer: Any, key: str, var: Any, tensor: Any, axes: list[int],
                 perm: layout.Perm) -> Any:
    """A weight over Keras ``axes`` reshaped to broadcast against the IR value held with ``perm``."""
    rank = len(tensor.shape)
    arr = to_numpy(var, np.float32).reshape([tensor.shape[a] for a in axes])
    return ctx.weight(layer, key, np.ascontiguousarray(ctx.channel_param(arr, axes, rank, perm)))


def layer_norm_rms(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    """LayerNormalization(rms_scaling=True): Keras scales by the variance, not the mean
    square, and has no beta: ``x * rsqrt(var(x) + eps) * gamma``."""
    x, perm, axes, ir_axes = _normalized_axes(ctx, inputs[0], layer.axis)
    mean = ctx.op("ReduceMean", [x, ctx.ints(ir_axes)], {"keepdims": 1})
    d = ctx.op("Sub", [x, mean])
    var = ctx.op("ReduceMean", [ctx.op("Mul", [d, d]), ctx.ints(ir_axes)], {"keepdims": 1})
    y = ctx.op("Mul", [x, _rsqrt(ctx, ctx.op("Add", [var, ctx.const(float(layer.epsilon))]))])
    if layer.gamma is not None:
        y = ctx.op("Mul", [y, _scale_param(ctx, layer, "gamma", layer.gamma, inputs[0], axes, perm)])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("RMSNormalization")
def rms_norm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    # Keras: x * rsqrt(mean(x^2) + eps) * scale
    x, perm, axes, ir_axes = _normalized_axes(ctx, inputs[0], layer.axis)
    ms = ctx.op("ReduceMean", [ctx.op("Mul", [x, x]), ctx.ints(ir_axes)], {"keepdims": 1})
    eps = float(layer.epsilon) if layer.epsilon is not None else 1e-7
    y = ctx.op("Mul", [x, _rsqrt(ctx, ctx.op("Add", [ms, ctx.const(eps)]))])
    y = ctx.op("Mul", [y, _scale_param(ctx, layer, "scale", layer.scale, inputs[0], axes, perm)])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("UnitNormalization")
def unit_norm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    # Keras: x * min(rsqrt(sum(x^2)), 1 / 1e-12)
    x, perm, _, ir_axes = _normalized_axes(ctx, inputs[0], layer.axis)
    ss = ctx.op("ReduceSum", [ctx.op("Mul", [x, x]), ctx.ints(ir_axes)], {"keepdims": 1})
    inv = ctx.op("Min", [_rsqrt(ctx, ss), ctx.const(1e12)])
    ctx.set(outputs[0], ctx.op("Mul", [x, inv]), perm)


@HANDLERS.register("GroupNormalization")
def group_norm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    axis = int(layer.axis) % rank
    c = inputs[0].shape[axis]
    g = int(layer.groups)
    if c is None or c % g:
        raise ConversionError(f"expected a known channel count divisible by groups={g}, received {c}")
    # hold the channel axis at IR axis 1: (N, C, *rest) -> (N, G, C/G, prod(rest))
    perm = _image_perm(rank, axis) if rank > 2 else layout.identity(rank)
    cur = ctx.perm_of(inputs[0])
    if layout.ir_axis(axis, cur) == 1:
        perm = cur
    x = ctx.get(inputs[0], perm)
    xg = ctx.op("Reshape", [x, ctx.ints([0, g, c // g, -1])])
    mean = ctx.op("ReduceMean", [xg, ctx.ints([2, 3])], {"keepdims": 1})
    d = ctx.op("Sub", [xg, mean])
    var = ctx.op("ReduceMean", [ctx.op("Mul", [d, d]), ctx.ints([2, 3])], {"keepdims": 1})
    # Keras: inv = rsqrt(var + eps) * gamma; y = x * inv + (beta - mean * inv)
    inv = _rsqrt(ctx, ctx.op("Add", [var, ctx.const(float(layer.epsilon))]))
    shape = (1, g, c // g, 1)
    if layer.scale:
        gamma = to_numpy(layer.gamma, np.float32).reshape(shape)
        inv = ctx.op("Mul", [inv, ctx.weight(layer, "gamma", gamma)])
    res = ctx.op("Neg", [ctx.op("Mul", [mean, inv])])
    if layer.center:
        res = ctx.op("Add", [res, ctx.weight(layer, "beta", to_numpy(layer.beta, np.float32).reshape(shape))])
    y = ctx.op("Add", [ctx.op("Mul", [xg, inv]), res])
    ctx.set(outputs[0], ctx.op("Reshape", [y, ctx.op("Shape", [x])]), perm)
