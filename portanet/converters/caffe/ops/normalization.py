"""BatchNorm (scale-factor blob), Scale, Bias, a BatchNorm+Scale pair as one ONNX
BatchNormalization, LRN (ACROSS_CHANNELS / WITHIN_CHANNEL), MVN and SSD's Normalize."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.context import Ctx, Out
from portanet.converters.caffe.net import Layer
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError
from portanet.ir.frozen import mark_frozen


def bn_statistics(ctx: Ctx, bn: Layer, channels: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Caffe BatchNorm blobs -> (mean, var, eps): blobs 0/1 are sums scaled by blob 2."""
    saved = ctx.layer
    ctx.layer = bn  # blob errors name the BatchNorm layer
    try:
        ctx.expect_blobs(3, "mean, variance, scale factor")
        mean = ctx.blob(0, [channels], "mean")
        var = ctx.blob(1, [channels], "variance")
        factor = float(ctx.blob(2, [1], "scale factor")[0])
    finally:
        ctx.layer = saved
    f = 0.0 if factor == 0 else 1.0 / factor
    return (mean * f).astype(np.float32), (var * f).astype(np.float32), float(bn.param.batch_norm_param.eps)


def _bn_node(ctx: Ctx, bn: Layer, gamma: np.ndarray, beta: np.ndarray, suffix: str) -> ir.Value:
    shape = ctx.shape
    if len(shape) < 2:
        raise ConversionError(f"expected a bottom with channels on axis 1, received {shape}")
    c = shape[1]
    mean, var, eps = bn_statistics(ctx, bn, c)
    return ctx.op("BatchNormalization", [
        ctx.x,
        ctx.param(f"{suffix}scale", gamma),
        ctx.param(f"{suffix}bias", beta),
        ctx.buffer(f"{suffix}mean", mean),
        ctx.buffer(f"{suffix}var", var),
    ], {"epsilon": eps, "momentum": float(bn.param.batch_norm_param.moving_average_fraction)})


@HANDLERS.register("BatchNorm")
def batch_norm(ctx: Ctx) -> list[Out]:
    """``y = (x - mean) / sqrt(var + eps)`` with no affine part (a Scale layer adds it)."""
    ctx.expect_bottoms(1)
    p = ctx.p.batch_norm_param
    shape = ctx.shape
    if p.HasField("use_global_stats") and not p.use_global_stats:
        return [Out(_batch_statistics(ctx, float(p.eps)), shape)]
    c = shape[1] if len(shape) > 1 else 0
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    y = _bn_node(ctx, ctx.layer, ones, zeros, "")
    # Caffe's BatchNorm has no affine part: the unit scale and zero shift are not weights
    for v in y.producer().inputs[1:3]:
        mark_frozen(v, "caffe BatchNorm without Scale")
    return [Out(y, shape)]


def _batch_statistics(ctx: Ctx, eps: float) -> ir.Value:
    """``use_global_stats: false``: normalise with the statistics of the batch itself
    (mean and biased variance over every axis but the channels)."""
    axes = ctx.ints([0, *range(2, len(ctx.shape))])
    mean = ctx.op("ReduceMean", [ctx.x, axes], {"keepdims": 1})
    xc = ctx.op("Sub", [ctx.x, mean])
    var = ctx.op("ReduceMean", [ctx.op("Mul", [xc, xc]), axes], {"keepdims": 1})
    std = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.fconst(np.float32(eps))])])
    return ctx.op("Div", [xc, std])


def _scale_shape(ctx: Ctx, axis: int, num_axes: int) -> list[int]:
    shape = ctx.shape
    if num_axes == -1:
        return shape[axis:]
    if num_axes < 0 or axis + num_axes > len(shape):
        raise ConversionError(f"num_axes {num_axes} from axis {axis} does not fit the bottom {shape}")
    return shape[axis : axis + num_axes]


def _broadcast_param(ctx: Ctx, arr: np.ndarray, axis: int) -> np.ndarray:
    """Left-aligned Caffe broadcasting at ``axis`` -> ONNX's right-aligned: append 1s."""
    trailing = len(ctx.shape) - axis - arr.ndim
    return arr.reshape(list(arr.shape) + [1] * trailing)


def _second_bottom(ctx: Ctx, axis: int) -> ir.Value:
    """The second bottom as the scale/bias operand, reshaped to (its dims) + trailing 1s."""
    s0, s1 = ctx.shapes
    if s0[axis : axis + len(s1)] != s1:
        raise ConversionError(
            f"bottom 1 must match bottom 0's dims from axis {axis}: expected {s0[axis : axis + len(s1)]}, "
            f"received {s1}"
        )
    trailing = len(s0) - axis - len(s1)
    return ctx.reshape(ctx.inputs[1], [0] * len(s1) + [1] * trailing) if trailing else ctx.inputs[1]


@HANDLERS.register("Scale")
def scale(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1, 2)
    p = ctx.p.scale_param
    if "bn" in ctx.extra:
        return [Out(_fused_bn_scale(ctx, ctx.extra["bn"]), ctx.shape)]
    axis = ctx.axis(p.axis)
    n_blobs = (len(ctx.inputs) == 1) + bool(p.bias_term)
    if n_blobs:
        ctx.expect_blobs(n_blobs, "scale, bias" if n_blobs == 2 else "bias" if len(ctx.inputs) == 2 else "scale")
    if len(ctx.inputs) == 2:
        y = ctx.op("Mul", [ctx.x, _second_bottom(ctx, axis)])
        n_scale_blobs = 0
        bias_shape = ctx.shapes[1]
    else:
        sshape = _scale_shape(ctx, axis, p.num_axes)
        gamma = _broadcast_param(ctx, ctx.blob(0, sshape, "scale"), axis)
        y = ctx.op("Mul", [ctx.x, ctx.param("scale", gamma)])
        n_scale_blobs = 1
        bias_shape = sshape
    if p.bias_term:
        beta = _broadcast_param(ctx, ctx.blob(n_scale_blobs, bias_shape, "bias"), axis)
        y = ctx.op("Add", [y, ctx.param("bias", beta)])
    return [Out(y, ctx.shape)]


def _fused_bn_scale(ctx: Ctx, bn: Layer) -> ir.Value:
    """BatchNorm followed by a per-channel Scale: one ONNX BatchNormalization whose
    scale/bias are the Scale layer's gamma/beta."""
    c = ctx.shape[1]
    bias_term = ctx.p.scale_param.bias_term
    ctx.expect_blobs(2 if bias_term else 1, "scale, bias" if bias_term else "scale")
    gamma = ctx.blob(0, [c], "scale")
    beta = ctx.blob(1, [c], "bias") if ctx.p.scale_param.bias_term else np.zeros(c, np.float32)
    return _bn_node(ctx, bn, gamma, beta, "")


def can_fuse_scale(bn: Layer, scale_layer: Layer) -> bool:
    """True if ``scale_layer`` is a per-channel (axis 1) affine that can join ``bn``."""
    if scale_layer.type != "Scale" or len(scale_layer.bottoms) != 1:
        return False
    p = scale_layer.param.scale_param
    if p.axis != 1 or p.num_axes != 1:
        return False
    bp = bn.param.batch_norm_param
    return not (bp.HasField("use_global_stats") and not bp.use_global_stats)


@HANDLERS.register("Bias")
def bias(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1, 2)
    p = ctx.p.bias_param
    axis = ctx.axis(p.axis)
    if len(ctx.inputs) == 2:
        b = _second_bottom(ctx, axis)
    else:
        ctx.expect_blobs(1, "bias")
        b = ctx.param("bias", _broadcast_param(ctx, ctx.blob(0, _scale_shape(ctx, axis, p.num_axes), "bias"), axis))
    return [Out(ctx.op("Add", [ctx.x, b]), ctx.shape)]


@HANDLERS.register("Axpy")
def axpy(ctx: Ctx) -> list[Out]:
    """SENet fork: ``top = a * x + y`` with bottoms (a (N, C, 1, 1) or (N, C), x, y)."""
    ctx.expect_bottoms(3)
    a_shape, x_shape, y_shape = ctx.shapes
    if x_shape != y_shape or a_shape[:2] != x_shape[:2] or any(d != 1 for d in a_shape[2:]):
        raise ConversionError(
            f"expected bottoms a (N, C, 1, 1), x and y of equal shape; received {a_shape}, {x_shape}, {y_shape}"
        )
    a = ctx.inputs[0]
    if len(a_shape) < len(x_shape):  # (N, C) -> (N, C, 1, 1)
        a = ctx.reshape(a, [0, 0] + [1] * (len(x_shape) - 2))
    y = ctx.op("Add", [ctx.op("Mul", [a, ctx.inputs[1]]), ctx.inputs[2]])
    return [Out(y, x_shape)]


@HANDLERS.register("LRN")
def lrn(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1)
    p = ctx.p.lrn_param
    n = p.local_size
    if n % 2 == 0:
        raise ConversionError(f"local_size must be odd, received {n}")
    if p.norm_region == 0:
        # y = x * (k + alpha/n * sum_{n channels} x^2)^-beta: exactly ONNX LRN
        y = ctx.op("LRN", [ctx.x], {"size": n, "alpha": float(p.alpha), "beta": float(p.beta), "bias": float(p.k)})
        return [Out(y, ctx.shape)]
    # WITHIN_CHANNEL: y = x * (1 + alpha * avg_{n x n}(x^2))^-beta; the average counts the
    # zero padding (pad (n-1)/2, stride 1, so every window has n*n cells); k is ignored
    pad = (n - 1) // 2
    sq = ctx.op("Mul", [ctx.x, ctx.x])
    avg = ctx.op("AveragePool", [sq], {
        "kernel_shape": [n, n], "strides": [1, 1], "pads": [pad] * 4, "count_include_pad": 1,
    })
    base = ctx.op("Add", [ctx.op("Mul", [avg, ctx.fconst(np.float32(p.alpha))]), ctx.fconst(np.float32(1.0))])
    factor = ctx.op("Pow", [base, ctx.fconst(np.float32(-p.beta))])
    return [Out(ctx.op("Mul", [ctx.x, factor]), ctx.shape)]


@HANDLERS.register("MVN")
def mvn(ctx: Ctx) -> list[Out]:
    """Mean (and variance) normalisation per sample and channel (or across channels):
    ``y = (x - mean) / (sqrt(var) + eps)``."""
    ctx.expect_bottoms(1)
    p = ctx.p.mvn_param
    rank = len(ctx.shape)
    axes = ctx.ints(list(range(1 if p.across_channels else 2, rank)))
    mean = ctx.op("ReduceMean", [ctx.x, axes], {"keepdims": 1})
    y = ctx.op("Sub", [ctx.x, mean])
    if p.normalize_variance:
        var = ctx.op("ReduceMean", [ctx.op("Mul", [y, y]), axes], {"keepdims": 1})
        std = ctx.op("Add", [ctx.op("Sqrt", [var]), ctx.fconst(np.float32(p.eps))])
        y = ctx.op("Div", [y, std])
    return [Out(y, ctx.shape)]


@HANDLERS.register("Normalize")
def normalize(ctx: Ctx) -> list[Out]:
    """SSD's L2 normalisation: ``y = x / sqrt(sum x^2 + eps) * scale`` over (C, H, W) per
    sample (across_spatial) or over C per position."""
    ctx.expect_bottoms(1)
    p = ctx.p.norm_param
    shape = ctx.shape
    if len(shape) < 2:
        raise ConversionError(f"expected a bottom with channels, received {shape}")
    axes = ctx.ints(list(range(1, len(shape))) if p.across_spatial else [1])
    ss = ctx.op("ReduceSumSquare", [ctx.x, axes], {"keepdims": 1})
    norm = ctx.op("Sqrt", [ctx.op("Add", [ss, ctx.fconst(np.float32(p.eps))])])
    y = ctx.op("Div", [ctx.x, norm])
    ctx.expect_blobs(1, "scale")
    if p.channel_shared:
        s = ctx.blob(0, [1], "scale")
    else:
        s = ctx.blob(0, [shape[1]], "scale").reshape([shape[1]] + [1] * (len(shape) - 2))
    return [Out(ctx.op("Mul", [y, ctx.param("scale", s)]), shape)]
