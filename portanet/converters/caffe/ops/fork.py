"""Layers of the Caffe forks people deploy: Interp (DeepLab/PSPNet), Upsample (SegNet/ENet
max-unpooling with a mask bottom; the YOLOv3 forks' nearest-neighbour form), the fork ``BN``
layer (SegNet/ENet), ShuffleChannel (ShuffleNet), ROIPooling (Fast/Faster R-CNN), Reorg
(YOLOv2, darknet's index arithmetic), and the MAX Pooling mask top that Upsample consumes.

Semantics follow each fork's C++ (``caffe_cpu_interp2``, ``UpsampleLayer``, ``BNLayer``,
``ShuffleChannelLayer``, ``ROIPoolingLayer``, darknet's ``reorg_cpu``); where the forks
disagree the choice is stated on the handler.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.context import Ctx, Out
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError


def _expect_4d(ctx: Ctx, i: int = 0) -> list[int]:
    shape = ctx.shapes[i]
    if len(shape) != 4:
        raise ConversionError(f"expected a 4-D (N, C, H, W) bottom {i}, received {shape}")
    return shape


# ---------------------------------------------------------------------------------- Interp
def interp_size(h_in: int, w_in: int, p) -> tuple[int, int]:
    """InterpLayer::Reshape: the output size after pad_beg/pad_end cropping."""
    if p.pad_beg > 0 or p.pad_end > 0:
        raise ConversionError(f"pad_beg and pad_end only crop (must be <= 0), received {p.pad_beg}, {p.pad_end}")
    h_eff, w_eff = h_in + p.pad_beg + p.pad_end, w_in + p.pad_beg + p.pad_end
    if h_eff < 1 or w_eff < 1:
        raise ConversionError(f"pads {p.pad_beg}/{p.pad_end} leave nothing of the {h_in}x{w_in} input")
    zoom, shrink = p.zoom_factor, p.shrink_factor
    if zoom < 1 or shrink < 1:
        raise ConversionError(f"zoom_factor and shrink_factor must be >= 1, received {zoom}, {shrink}")
    if shrink != 1 and zoom == 1:
        return (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
    if zoom != 1 and shrink == 1:
        return h_eff + (h_eff - 1) * (zoom - 1), w_eff + (w_eff - 1) * (zoom - 1)
    if p.height and p.width:
        return int(p.height), int(p.width)
    if zoom != 1 and shrink != 1:
        h, w = (h_eff - 1) // shrink + 1, (w_eff - 1) // shrink + 1
        return h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1)
    raise ConversionError("set zoom_factor, shrink_factor, or height and width")


@HANDLERS.register("Interp")
def interp(ctx: Ctx) -> list[Out]:
    """Bilinear resize with aligned corners (``caffe_cpu_interp2``) of the input cropped by
    -pad_beg / -pad_end; a second bottom gives the output size instead of the parameters."""
    ctx.expect_bottoms(1, 2)
    n, c, h, w = _expect_4d(ctx)
    p = ctx.p.interp_param
    if len(ctx.inputs) == 2:
        ho, wo = _expect_4d(ctx, 1)[2:]
    else:
        ho, wo = interp_size(h, w, p)
    x = ctx.x
    if p.pad_beg or p.pad_end:
        x = ctx.op("Slice", [x, ctx.ints([-p.pad_beg] * 2), ctx.ints([h + p.pad_end, w + p.pad_end]), ctx.ints([2, 3])])
    if (ho, wo) == (h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end):
        return [Out(ctx.op("Identity", [x]), [n, c, ho, wo])]
    sizes = ctx.op("Concat", [ctx.op("Shape", [x], {"end": 2}), ctx.ints([ho, wo])], {"axis": 0})
    y = ctx.op("Resize", [x, None, None, sizes], {"mode": "linear", "coordinate_transformation_mode": "align_corners"})
    return [Out(y, [n, c, ho, wo])]


# --------------------------------------------------------------------------------- Upsample
@HANDLERS.register("Upsample")
def upsample(ctx: Ctx) -> list[Out]:
    """With a mask bottom (SegNet/ENet): each value goes to the position its max-pooling mask
    recorded in an output of upsample_h x upsample_w (default H*scale_h, minus 1 with
    pad_out_h), zeros elsewhere. With one bottom (the YOLOv3 forks): nearest-neighbour by ``scale``."""
    ctx.expect_bottoms(1, 2)
    n, c, h, w = _expect_4d(ctx)
    p = ctx.p.upsample_param
    sh = p.scale_h if p.HasField("scale_h") else p.scale
    sw = p.scale_w if p.HasField("scale_w") else p.scale
    if sh < 1 or sw < 1:
        raise ConversionError(f"scales must be >= 1, received {sh}, {sw}")
    if len(ctx.inputs) == 1:
        if p.HasField("upsample_h") or p.HasField("upsample_w") or p.pad_out_h or p.pad_out_w:
            raise ConversionError("upsample_h/upsample_w/pad_out need the mask bottom (max-unpooling)")
        scales = ctx.fconst(np.asarray([1, 1, sh, sw], np.float32))
        y = ctx.op("Resize", [ctx.x, None, scales], {"mode": "nearest", "nearest_mode": "floor",
                                                      "coordinate_transformation_mode": "asymmetric"})
        return [Out(y, [n, c, h * sh, w * sw])]
    if ctx.shapes[1] != ctx.shape:
        raise ConversionError(f"the mask bottom has shape {ctx.shapes[1]}, expected {ctx.shape}")
    ho = int(p.upsample_h) if p.upsample_h else h * sh - int(p.pad_out_h)
    wo = int(p.upsample_w) if p.upsample_w else w * sw - int(p.pad_out_w)
    data = ctx.reshape(ctx.x, [0, 0, -1])  # (N, C, H*W)
    idx = ctx.op("Cast", [ctx.reshape(ctx.inputs[1], [0, 0, -1])], {"to": ir.DataType.INT64})
    zeros = ctx.op("ConstantOfShape", [ctx.op("Concat", [ctx.op("Shape", [ctx.x], {"end": 2}), ctx.ints([ho * wo])],
                                                {"axis": 0})], {"value": ir.tensor(np.zeros(1, np.float32))})
    y = ctx.op("ScatterElements", [zeros, idx, data], {"axis": 2})
    return [Out(ctx.reshape(y, [0, 0, ho, wo]), [n, c, ho, wo])]


def max_pool_with_mask(ctx: Ctx, attrs: dict, out_shape: list[int]) -> list[Out]:
    """MAX Pooling with a second top: Caffe's mask, the argmax's index ``h * W + w`` in its
    input plane (as a float), from ONNX's Indices (flattened over the whole tensor).

    Padding is explicit (-inf, which never wins, as Caffe's skipped cells) so the pooling itself
    has no pads: indices then live in the padded plane and are mapped back."""
    h, w = ctx.shape[2], ctx.shape[3]
    pads = list(attrs["pads"])  # [top, left, bottom, right]
    x = ctx.x
    if any(pads):
        x = ctx.op("Pad", [x, ctx.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]),
                           ctx.fconst(np.float32(-np.inf))])
    hp, wp = h + pads[0] + pads[2], w + pads[1] + pads[3]
    y, indices = ctx.op("MaxPool", [x], {**attrs, "pads": [0, 0, 0, 0]}, outputs=2)
    plane = ctx.op("Mod", [indices, ctx.ints(hp * wp)])  # index in the padded plane
    row = ctx.op("Sub", [ctx.op("Div", [plane, ctx.ints(wp)]), ctx.ints(pads[0])])
    col = ctx.op("Sub", [ctx.op("Mod", [plane, ctx.ints(wp)]), ctx.ints(pads[1])])
    index = ctx.op("Add", [ctx.op("Mul", [row, ctx.ints(w)]), col])
    return [Out(y, out_shape), Out(ctx.op("Cast", [index], {"to": ir.DataType.FLOAT}), list(out_shape))]


# ----------------------------------------------------------------------------------------- BN
LEARN, INFERENCE = 0, 1


@HANDLERS.register("BN")
def bn(ctx: Ctx) -> list[Out]:
    """The fork BN layer. Four blobs (scale, shift, mean, variance; yjxiong's layout): a
    BatchNormalization with ``eps``. Two blobs with ``bn_mode: INFERENCE`` (SegNet/ENet, the
    statistics folded into scale and shift): ``scale * x + shift``."""
    ctx.expect_bottoms(1)
    shape = ctx.shape
    if len(shape) < 2:
        raise ConversionError(f"expected a bottom with channels, received {shape}")
    ch = shape[1]
    p = ctx.p.bn_param
    n_blobs = len(ctx.layer.blobs)
    if n_blobs == 4:
        scale, shift, mean, var = (ctx.blob(i, [ch], what) for i, what in
                                   enumerate(("scale", "shift", "mean", "variance")))
        y = ctx.op("BatchNormalization", [ctx.x, ctx.param("scale", scale), ctx.param("shift", shift),
                                          ctx.buffer("mean", mean), ctx.buffer("var", var)],
                   {"epsilon": float(p.eps)})
        return [Out(y, shape)]
    if n_blobs == 2:
        if p.bn_mode != INFERENCE:
            raise ConversionError(
                "bn_mode LEARN normalizes with each batch's own statistics even at test time; deploy nets "
                "set bn_mode: INFERENCE (statistics folded into scale and shift)"
            )
        trailing = [1] * (len(shape) - 2)
        scale = ctx.param("scale", ctx.blob(0, [ch], "scale").reshape(1, ch, *trailing))
        shift = ctx.param("shift", ctx.blob(1, [ch], "shift").reshape(1, ch, *trailing))
        return [Out(ctx.op("Add", [ctx.op("Mul", [ctx.x, scale]), shift]), shape)]
    if n_blobs == 0:
        raise ConversionError("has no weights: pass the .caffemodel that holds them", path=ctx.weights_path)
    raise ConversionError(f"expected 2 (scale, shift) or 4 (scale, shift, mean, variance) blobs, received {n_blobs}")


# ------------------------------------------------------------------------------ ShuffleChannel
@HANDLERS.register("ShuffleChannel")
def shuffle_channel(ctx: Ctx) -> list[Out]:
    """(N, g*k, H, W) viewed as (N, g, k, H, W), transposed to (N, k, g, H, W)."""
    ctx.expect_bottoms(1)
    n, c, h, w = _expect_4d(ctx)
    g = int(ctx.p.shuffle_channel_param.group)
    if g < 1 or c % g:
        raise ConversionError(f"group {g} does not divide the {c} channels")
    y = ctx.reshape(ctx.x, [0, g, c // g, h, w])
    y = ctx.op("Transpose", [y], {"perm": [0, 2, 1, 3, 4]})
    return [Out(ctx.reshape(y, [0, c, h, w]), [n, c, h, w])]


# --------------------------------------------------------------------------------- ROIPooling
@HANDLERS.register("ROIPooling")
def roi_pooling(ctx: Ctx) -> list[Out]:
    """Fast R-CNN max ROI pooling; bottom 1 holds the ROIs as (R, 5) rows
    [batch index, x1, y1, x2, y2] (any trailing 1-dims), in input-image pixels."""
    ctx.expect_bottoms(2)
    n, c, h, w = _expect_4d(ctx)
    p = ctx.p.roi_pooling_param
    if p.pooled_h < 1 or p.pooled_w < 1:
        raise ConversionError("pooled_h and pooled_w must be set")
    rois_shape = ctx.shapes[1]
    if len(rois_shape) < 2 or rois_shape[1] != 5 or any(d != 1 for d in rois_shape[2:]):
        raise ConversionError(f"expected ROIs of shape (R, 5), received {rois_shape}")
    rois = ctx.reshape(ctx.inputs[1], [-1, 5])
    y = ctx.op("MaxRoiPool", [ctx.x, rois], {"pooled_shape": [int(p.pooled_h), int(p.pooled_w)],
                                             "spatial_scale": float(p.spatial_scale)})
    return [Out(y, [rois_shape[0], c, int(p.pooled_h), int(p.pooled_w)])]


# -------------------------------------------------------------------------------------- Reorg
@HANDLERS.register("Reorg")
def reorg(ctx: Ctx) -> list[Out]:
    """darknet's ``reorg_cpu`` as the YOLOv2 Caffe ports call it (forward = 0), which is not a
    plain space-to-depth: the (C, H, W) input is read as (C/s², H*s, W*s) and that is
    space-to-depth'ed, giving (C*s², H/s, W/s). ``reverse: true`` is the inverse mapping."""
    ctx.expect_bottoms(1)
    n, c, h, w = _expect_4d(ctx)
    p = ctx.p.reorg_param
    s = int(p.stride)
    if s < 1:
        raise ConversionError(f"stride must be >= 1, received {s}")
    if not p.reverse:
        if c % (s * s) or h % s or w % s:
            raise ConversionError(f"stride {s}: channels {c} must divide by {s * s}, H and W ({h}, {w}) by {s}")
        y = ctx.reshape(ctx.x, [0, c // (s * s), h * s, w * s])
        y = ctx.op("SpaceToDepth", [y], {"blocksize": s})  # (N, C, H, W)
        return [Out(ctx.reshape(y, [0, c * s * s, h // s, w // s]), [n, c * s * s, h // s, w // s])]
    if c % (s * s):
        raise ConversionError(f"stride {s}: channels {c} must divide by {s * s}")
    y = ctx.op("DepthToSpace", [ctx.x], {"blocksize": s, "mode": "DCR"})  # (N, C/s², H*s, W*s)
    return [Out(y, [n, c // (s * s), h * s, w * s])]
