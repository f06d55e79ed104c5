"""BatchNormalization and LayerNormalization."""

from __future__ import annotations

from typing import Any

import numpy as np

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError


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
    y = ctx.op("BatchNormalization", [x, *w], {"epsilon": float(layer.epsilon)})
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("LayerNormalization")
def layer_norm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    axes = _axes(layer.axis, rank)
    if getattr(layer, "rms_scaling", False):
        raise ConversionError("rms_scaling=True is not supported")
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
