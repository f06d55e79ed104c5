"""Preprocessing layers that live inside models: Rescaling, Normalization, Resizing."""

from __future__ import annotations

from typing import Any

import numpy as np

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError
from portanet.ir.frozen import mark_frozen


def keras_broadcast(array: Any, rank: int, perm: layout.Perm) -> np.ndarray:
    """A constant broadcast NumPy-style against a Keras tensor of ``rank``, laid out like
    the IR value held with ``perm``."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.ndim > rank:
        arr = arr.reshape(arr.shape[arr.ndim - rank:])
    arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    return np.ascontiguousarray(np.transpose(arr, perm))


@HANDLERS.register("Rescaling")
def rescaling(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    rank = len(inputs[0].shape)
    if str(inputs[0].dtype) != "float32":
        x = ctx.op("Cast", [x], {"to": 1})
    scale = keras_broadcast(to_numpy(layer.scale), rank, perm)
    offset = keras_broadcast(to_numpy(layer.offset), rank, perm)
    # constants of the layer's config, never trained by Keras
    w_scale = mark_frozen(ctx.weight(layer, "scale", scale), "keras Rescaling constant")
    w_offset = mark_frozen(ctx.weight(layer, "offset", offset), "keras Rescaling constant")
    y = ctx.op("Mul", [x, w_scale])
    y = ctx.op("Add", [y, w_offset])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("Normalization")
def normalization(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    rank = len(inputs[0].shape)
    mean = keras_broadcast(to_numpy(layer.mean), rank, perm)
    var = keras_broadcast(to_numpy(layer.variance), rank, perm)
    # Keras: (x - mean) / max(sqrt(var), epsilon); sqrt is exactly rounded in both
    denom = np.maximum(np.sqrt(var), np.float32(1e-7)).astype(np.float32)
    # adapted statistics: non-trainable in Keras
    m = mark_frozen(ctx.weight(layer, "mean", mean), "keras Normalization constant")
    d = mark_frozen(ctx.weight(layer, "denominator", denom), "keras Normalization constant")
    if layer.invert:
        y = ctx.op("Add", [m, ctx.op("Mul", [x, d])])
    else:
        y = ctx.op("Div", [ctx.op("Sub", [x, m]), d])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("Resizing")
def resizing(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    if layer.crop_to_aspect_ratio or getattr(layer, "pad_to_aspect_ratio", False):
        raise ConversionError("crop_to_aspect_ratio / pad_to_aspect_ratio are not supported")
    if getattr(layer, "antialias", False):
        raise ConversionError("antialias=True is not supported")
    rank = len(inputs[0].shape)
    if rank != 4:
        raise ConversionError(f"expected a batched 4-D image, received rank {rank}")
    perm = layout.for_data_format(layer.data_format, rank)
    x = ctx.get(inputs[0], perm)
    # output sizes: (N, C) of the input, then (height, width)
    shape = ctx.op("Shape", [x], {"start": 0, "end": 2})
    sizes = ctx.op("Concat", [shape, ctx.ints([int(layer.height), int(layer.width)])], {"axis": 0})
    mode = layer.interpolation
    if mode == "bilinear":
        attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    elif mode == "nearest":
        # TensorFlow's half-pixel nearest: floor((dst + 0.5) * in / out)
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                 "nearest_mode": "round_prefer_ceil"}
    else:
        raise ConversionError(f"expected interpolation 'bilinear' or 'nearest', received '{mode}'")
    ctx.set(outputs[0], ctx.op("Resize", [x, None, None, sizes], attrs), perm)
