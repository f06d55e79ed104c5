"""Reshaping layers: Flatten, Reshape, Permute, ZeroPadding1D/2D/3D, Cropping1D/2D/3D,
UpSampling1D/2D/3D."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext
from portanet.converters.keras.ops._table import HANDLERS
from portanet.errors import ConversionError

_INT64_MAX = np.iinfo(np.int64).max


@HANDLERS.register("Flatten")
def flatten(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    if getattr(layer, "data_format", "channels_last") == "channels_first" and rank > 2:
        # Keras moves channels last before flattening
        order: layout.Perm = (0, *range(2, rank), 1)
    else:
        # the Keras (channels-last) element order, exactly: (N, H, W, C) -> (N, H*W*C)
        order = layout.identity(rank)
    held = ctx.perm_of(inputs[0])
    shape = inputs[0].shape
    if [a for a in held if shape[a] != 1] == [a for a in order if shape[a] != 1]:
        # only size-1 axes differ (e.g. (N, C, 1, 1) vs (N, 1, 1, C)): same element order, no Transpose
        x = ctx.get(inputs[0], held)
    else:
        x = ctx.get(inputs[0], order)
    ctx.set(outputs[0], ctx.op("Flatten", [x], {"axis": 1}))


@HANDLERS.register("Reshape")
def reshape(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x = ctx.get(inputs[0])
    target = [0] + [int(d) if d is not None else -1 for d in layer.target_shape]  # 0: keep the batch
    ctx.set(outputs[0], ctx.op("Reshape", [x, ctx.ints(target)]))


@HANDLERS.register("Permute")
def permute(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, held = ctx.get_any(inputs[0])
    want = (0, *[int(d) for d in layer.dims])  # Keras output = transpose(input, want)
    # one Transpose from however the input is held straight to the Keras output order
    ctx.set(outputs[0], ctx.op("Transpose", [x], {"perm": list(layout.between(held, want))}))


def _pairs(padding: Any, n: int) -> list[tuple[int, int]]:
    if isinstance(padding, int):
        return [(padding, padding)] * n
    if n == 1 and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return [(int(padding[0]), int(padding[1]))]  # 1-D: one (begin, end) pair
    out = []
    for p in padding:
        out.append((int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1])))
    if len(out) == 1 and n > 1:
        out = out * n
    if len(out) != n:
        raise ConversionError(f"expected {n} padding pairs, received {padding}")
    return out


def _image(ctx: KerasContext, layer: Any, tensor: Any) -> tuple[ir.Value, layout.Perm, int]:
    rank = len(tensor.shape)
    perm = layout.for_data_format(getattr(layer, "data_format", "channels_last"), rank)
    return ctx.get(tensor, perm), perm, rank - 2


@HANDLERS.register("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
def zero_padding(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm, n = _image(ctx, layer, inputs[0])
    pairs = _pairs(layer.padding, n)
    pads = [0, 0] + [p[0] for p in pairs] + [0, 0] + [p[1] for p in pairs]  # (N, C, *spatial)
    ctx.set(outputs[0], ctx.op("Pad", [x, ctx.ints(pads)], {"mode": "constant"}), perm)


@HANDLERS.register("Cropping1D", "Cropping2D", "Cropping3D")
def cropping(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm, n = _image(ctx, layer, inputs[0])
    pairs = _pairs(layer.cropping, n)
    starts = [b for b, _ in pairs]
    ends = [-e if e > 0 else _INT64_MAX for _, e in pairs]
    y = ctx.op("Slice", [x, ctx.ints(starts), ctx.ints(ends), ctx.ints(range(2, 2 + n))])
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("UpSampling1D", "UpSampling2D", "UpSampling3D")
def upsampling(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm, n = _image(ctx, layer, inputs[0])
    size = [int(layer.size)] * n if isinstance(layer.size, int) else [int(s) for s in layer.size]
    scales = ctx.const([1.0, 1.0, *[float(s) for s in size]])
    mode = getattr(layer, "interpolation", "nearest")
    if mode == "nearest":
        # integer nearest upsampling repeats each pixel: asymmetric coordinates, floor
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif mode == "bilinear":
        attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
    else:
        raise ConversionError(f"expected interpolation 'nearest' or 'bilinear', received '{mode}'")
    ctx.set(outputs[0], ctx.op("Resize", [x, None, scales], attrs), perm)
