"""Convolution and Deconvolution (ConvolutionParameter)."""

from __future__ import annotations

from typing import Any

from portanet.converters.caffe.context import Ctx, Out
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError


def _spatial(p: Any, name: str, hw: str, n: int, default: int | None) -> list[int]:
    """A repeated per-axis field ``name`` (one value applies to all axes) or its
    ``<hw>_h``/``<hw>_w`` pair (2-D only)."""
    h, w = f"{hw}_h", f"{hw}_w"
    values = list(getattr(p, name))
    if p.HasField(h) or p.HasField(w):
        if values:
            raise ConversionError(f"sets both {name} and {h}/{w}")
        if n != 2:
            raise ConversionError(f"{h}/{w} need 2 spatial axes, the bottom has {n}")
        return [getattr(p, h), getattr(p, w)]
    if not values:
        if default is None:
            raise ConversionError(f"{name} is not set (expected {name} or {h}/{w})")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ConversionError(f"{name} has {len(values)} values, expected 1 or {n} for {n} spatial axes")
    return values


def conv_geometry(p: Any, rank: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """kernel, stride, pad, dilation of a ConvolutionParameter for a ``rank``-D bottom."""
    if p.axis not in (1, -rank + 1):
        raise ConversionError(f"convolution axis {p.axis} is not supported (expected 1, channels)")
    n = rank - 2
    if n < 1:
        raise ConversionError(f"expected a bottom with spatial axes, received rank {rank}")
    kernel = _spatial(p, "kernel_size", "kernel", n, None)
    stride = _spatial(p, "stride", "stride", n, 1)
    pad = _spatial(p, "pad", "pad", n, 0)
    dilation = list(p.dilation)
    dilation = dilation * n if len(dilation) == 1 else dilation or [1] * n
    if len(dilation) != n:
        raise ConversionError(f"dilation has {len(p.dilation)} values, expected 1 or {n}")
    return kernel, stride, pad, dilation


def _conv_inputs(ctx: Ctx, weight_shape) -> tuple[dict, list]:
    """Shared by Convolution and Deconvolution: checked geometry as ONNX attributes, and the
    [x, weights(, bias)] inputs with the weight blob checked against ``weight_shape``."""
    ctx.expect_bottoms(1)
    p = ctx.p.convolution_param
    kernel, stride, pad, dilation = conv_geometry(p, len(ctx.shape))
    group, cout, cin = p.group, p.num_output, ctx.shape[1]
    if cin % group or cout % group:
        raise ConversionError(f"group {group} must divide channels {cin} and num_output {cout}")
    ctx.expect_blobs(2 if p.bias_term else 1, "weights, bias" if p.bias_term else "weights")
    inputs = [ctx.x, ctx.param("w", ctx.blob(0, weight_shape(cin, cout, group, kernel), "weights"))]
    if p.bias_term:
        inputs.append(ctx.param("b", ctx.blob(1, [cout], "bias")))
    geom = {"kernel_shape": kernel, "strides": stride, "pads": pad + pad, "dilations": dilation, "group": group}
    return geom, inputs


@HANDLERS.register("Convolution")
def convolution(ctx: Ctx) -> list[Out]:
    shape = ctx.shape
    geom, inputs = _conv_inputs(ctx, lambda cin, cout, group, kernel: [cout, cin // group, *kernel])
    kernel, stride, dilation = geom["kernel_shape"], geom["strides"], geom["dilations"]
    pad = geom["pads"][: len(kernel)]
    cout = ctx.p.convolution_param.num_output
    # (N, C, H, W) -> (N, num_output, H', W'); Caffe's floor formula equals ONNX's
    y = ctx.op("Conv", inputs, geom)
    spatial = [
        (i + 2 * pd - (d * (k - 1) + 1)) // s + 1
        for i, k, s, pd, d in zip(shape[2:], kernel, stride, pad, dilation)
    ]
    if any(o < 1 for o in spatial):
        raise ConversionError(f"kernel {kernel} does not fit the input {shape} (output {spatial})")
    return [Out(y, [shape[0], cout, *spatial])]


@HANDLERS.register("Deconvolution")
def deconvolution(ctx: Ctx) -> list[Out]:
    shape = ctx.shape
    # Caffe stores (C_in, num_output/group, kh, kw): ONNX ConvTranspose's layout
    geom, inputs = _conv_inputs(ctx, lambda cin, cout, group, kernel: [cin, cout // group, *kernel])
    kernel, stride, dilation = geom["kernel_shape"], geom["strides"], geom["dilations"]
    pad = geom["pads"][: len(kernel)]
    cout = ctx.p.convolution_param.num_output
    y = ctx.op("ConvTranspose", inputs, geom)
    spatial = [
        s * (i - 1) + d * (k - 1) + 1 - 2 * pd
        for i, k, s, pd, d in zip(shape[2:], kernel, stride, pad, dilation)
    ]
    return [Out(y, [shape[0], cout, *spatial])]
