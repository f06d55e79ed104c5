"""Detection ops (contrib) and the generic tensor ops detector post-processing uses:
round/rint/fix,
_contrib_box_decode, _contrib_ROIAlign, ROIPooling, _contrib_BilinearResize2D,
_contrib_AdaptiveAvgPooling2D, _contrib_MultiBoxPrior; _arange, where, comparison ops with a
scalar or broadcast (float 0/1 results, as MXNet), broadcast_mod (Python-style modulo, 0 for a
zero divisor), slice_like, repeat, tile, topk, gather_nd, broadcast_axis, broadcast_like,
shape_array, reverse.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS
from portanet.errors import ConversionError

_FLOAT = ir.DataType.FLOAT
_INT_MIN = int(np.iinfo(np.int64).min)


def _as_float_of(n: NodeCtx, b: ir.Value, like: ir.Value) -> ir.Value:
    """A bool result as MXNet's 0/1 in the input's dtype."""
    dt = n.conv.dtype(like)
    return n.op("Cast", [b], {"to": ir.DataType.FLOAT if dt == np.float32 else _onnx_type(dt)})


def _onnx_type(dt: np.dtype) -> ir.DataType:
    from portanet.ir.builder import ir_dtype

    return ir_dtype(dt)


# ---------------------------------------------------------------------------- comparisons
_CMP = {"greater": ("Greater", False), "lesser": ("Less", False), "greater_equal": ("GreaterOrEqual", False),
        "lesser_equal": ("LessOrEqual", False), "equal": ("Equal", False), "not_equal": ("Equal", True)}


def _cmp_scalar(op: str, negate: bool):
    def handler(n: NodeCtx) -> ir.Value:
        x = n.input(0)
        b = n.op(op, [x, n.scalar(n.attrs.float("scalar"), x)])
        return _as_float_of(n, n.op("Not", [b]) if negate else b, x)

    return handler


def _cmp_broadcast(op: str, negate: bool):
    def handler(n: NodeCtx) -> ir.Value:
        a, b = n.input(0), n.input(1)
        r = n.op(op, [a, b])
        return _as_float_of(n, n.op("Not", [r]) if negate else r, a)

    return handler


for _name, (_op, _neg) in _CMP.items():
    HANDLERS.register(f"_{_name}_scalar")(_cmp_scalar(_op, _neg))
    HANDLERS.register(f"broadcast_{_name}")(_cmp_broadcast(_op, _neg))


def _py_mod(n: NodeCtx, a: ir.Value, b: ir.Value) -> ir.Value:
    """MXNet's mod: the remainder takes the divisor's sign; a zero divisor gives 0."""
    if np.issubdtype(n.conv.dtype(a), np.integer):
        return n.op("Mod", [a, b], {"fmod": 0})
    r = n.op("Mod", [a, b], {"fmod": 1})
    zero = n.scalar(0.0, a)
    fix = n.op("And", [n.op("Not", [n.op("Equal", [r, zero])]),
                       n.op("Not", [n.op("Equal", [n.op("Less", [r, zero]), n.op("Less", [b, zero])])])])
    r = n.op("Where", [fix, n.op("Add", [r, b]), r])
    return n.op("Where", [n.op("Equal", [b, zero]), zero, r])


@HANDLERS.register("broadcast_mod", "_mod", "elemwise_mod")
def broadcast_mod(n: NodeCtx) -> ir.Value:
    return _py_mod(n, n.input(0), n.input(1))


@HANDLERS.register("_mod_scalar")
def mod_scalar(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    return _py_mod(n, x, n.scalar(n.attrs.float("scalar"), x))


@HANDLERS.register("round")
def round_(n: NodeCtx) -> ir.Value:
    """C's round: halves away from zero (ONNX Round rounds them to even)."""
    x = n.input(0)
    return n.op("Mul", [n.op("Sign", [x]), n.op("Floor", [n.op("Add", [n.op("Abs", [x]), n.scalar(0.5, x)])])])


@HANDLERS.register("rint")
def rint(n: NodeCtx) -> ir.Value:
    return n.op("Round", [n.input(0)])


@HANDLERS.register("fix", "trunc")
def fix(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    return n.op("Mul", [n.op("Sign", [x]), n.op("Floor", [n.op("Abs", [x])])])


@HANDLERS.register("where")
def where(n: NodeCtx) -> ir.Value:
    """``condition`` non-zero picks x; a 1-D condition picks whole rows of x."""
    cond, x, y = n.input(0), n.input(1), n.input(2)
    cdims, xdims = n.dims(cond), n.dims(x)
    c = n.op("Not", [n.op("Equal", [cond, n.scalar(0.0, cond)])])
    if cdims is not None and xdims is not None and len(cdims) == 1 and len(xdims) > 1:
        c = n.op("Unsqueeze", [c, n.ints(list(range(1, len(xdims))))])
    return n.op("Where", [c, x, y])


# ------------------------------------------------------------------------------ generation
@HANDLERS.register("_arange", "arange")
def arange(n: NodeCtx) -> ir.Value:
    start = n.attrs.float("start", 0.0)
    stop = n.attrs.float("stop", None)
    step = n.attrs.float("step", 1.0)
    repeat = n.attrs.int("repeat", 1)
    if n.attrs.bool("infer_range", False):
        raise ConversionError("infer_range=True (the length taken from a consumer) is not supported")
    if stop is None:
        start, stop = 0.0, start
    dtype = np.dtype(n.attrs.str("dtype", "float32") or "float32")
    count = max(0, int(math.ceil((stop - start) / step)))
    vals = np.asarray([start + i * step for i in range(count)], dtype=np.float64).astype(dtype)
    return n.const(np.repeat(vals, repeat))


@HANDLERS.register("shape_array")
def shape_array(n: NodeCtx) -> ir.Value:
    return n.op("Shape", [n.input(0)])


# ------------------------------------------------------------------------------- reshaping
def _axes(n: NodeCtx, key: str, rank: int) -> list[int]:
    raw = n.attrs.tuple(key, ())
    vals = [raw] if isinstance(raw, int) else list(raw)
    return [a % rank for a in vals]


@HANDLERS.register("reverse", "flip")
def reverse(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    axes = _axes(n, "axis", n.rank(x))
    k = len(axes)
    return n.op("Slice", [x, n.ints([-1] * k), n.ints([_INT_MIN] * k), n.ints(axes), n.ints([-1] * k)])


@HANDLERS.register("slice_like")
def slice_like(n: NodeCtx) -> ir.Value:
    x, like = n.input(0), n.input(1)
    rank = n.rank(x)
    axes = _axes(n, "axes", rank) or list(range(rank))
    ends = n.op("Gather", [n.conv.shape_value(like), n.ints(axes)], {"axis": 0})
    return n.op("Slice", [x, n.ints([0] * len(axes)), ends, n.ints(axes)])


def _shape_parts(n: NodeCtx, x: ir.Value, pieces: list) -> ir.Value:
    """A shape tensor from pieces: ints, or (start, end) ranges of x's shape."""
    parts = []
    for p in pieces:
        if isinstance(p, tuple):
            if p[1] > p[0]:
                parts.append(n.op("Slice", [n.conv.shape_value(x), n.ints([p[0]]), n.ints([p[1]])]))
        else:
            parts.append(n.ints([p]))
    return n.op("Concat", parts, {"axis": 0}) if len(parts) > 1 else parts[0]


@HANDLERS.register("repeat")
def repeat(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    reps = n.attrs.int("repeats")
    axis = n.attrs.int("axis", None)
    if axis is None:
        x = n.op("Reshape", [x, n.ints([-1])])
        axis = 0
    rank = n.rank(x) if n.dims(x) is not None else 1
    axis %= rank
    y = n.op("Unsqueeze", [x, n.ints([axis + 1])])
    y = n.op("Expand", [y, _shape_parts(n, x, [(0, axis + 1), reps, (axis + 1, rank)])])
    return n.op("Reshape", [y, _shape_parts(n, x, [(0, axis), -1, (axis + 1, rank)])])


@HANDLERS.register("tile")
def tile(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    reps = [int(r) for r in n.attrs.tuple("reps")]
    rank = n.rank(x)
    if len(reps) < rank:
        reps = [1] * (rank - len(reps)) + reps
    elif len(reps) > rank:
        x = n.op("Unsqueeze", [x, n.ints(list(range(len(reps) - rank)))])
    return n.op("Tile", [x, n.ints(reps)])


@HANDLERS.register("broadcast_axis", "broadcast_axes")
def broadcast_axis(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    rank = n.rank(x)
    axes = _axes(n, "axis", rank)
    sizes = n.attrs.tuple("size")
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    target = [1] * rank
    for a, s in zip(axes, sizes):
        target[a] = int(s)
    return n.op("Expand", [x, n.ints(target)])


@HANDLERS.register("broadcast_like")
def broadcast_like(n: NodeCtx) -> ir.Value:
    x, like = n.input(0), n.input(1)
    lhs_axes = n.attrs.tuple("lhs_axes", None)
    rhs_axes = n.attrs.tuple("rhs_axes", None)
    if lhs_axes is None and rhs_axes is None:
        return n.op("Expand", [x, n.conv.shape_value(like)])
    rank = n.rank(x)
    la = [a % rank for a in lhs_axes]
    ra = [a % n.rank(like) for a in rhs_axes]
    pieces: list = []
    for i in range(rank):
        if i in la:
            j = ra[la.index(i)]
            pieces.append(n.op("Slice", [n.conv.shape_value(like), n.ints([j]), n.ints([j + 1])]))
        else:
            pieces.append(n.ints([1]))
    return n.op("Expand", [x, n.op("Concat", pieces, {"axis": 0})])


@HANDLERS.register("gather_nd")
def gather_nd(n: NodeCtx) -> ir.Value:
    """MXNet's indices (M, ...) index the first M dims of data: ONNX wants them last."""
    x, idx = n.input(0), n.input(1)
    r = n.rank(idx)
    perm = list(range(1, r)) + [0]
    i = n.op("Cast", [n.op("Transpose", [idx], {"perm": perm})], {"to": ir.DataType.INT64})
    return n.op("GatherND", [x, i])


@HANDLERS.register("topk")
def topk(n: NodeCtx) -> ir.Value | list[ir.Value]:
    x = n.input(0)
    rank = n.rank(x)
    axis = n.attrs.int("axis", -1)
    if axis is None:
        x = n.op("Reshape", [x, n.ints([-1])])
        axis, rank = 0, 1
    axis %= rank
    k = n.attrs.int("k", 1)
    ret = n.attrs.str("ret_typ", "indices")
    ascend = n.attrs.bool("is_ascend", False)
    dtype = np.dtype(n.attrs.str("dtype", "float32") or "float32")
    k_t = n.dim(x, axis) if k <= 0 else n.ints([k])
    values, indices = n.op("TopK", [x, k_t], {"axis": axis, "largest": 0 if ascend else 1, "sorted": 1}, outputs=2)
    idx = n.op("Cast", [indices], {"to": _onnx_type(dtype)})
    if ret == "value":  # MXNet keeps the indices as a hidden second output: the value is 'output0'
        return [values, idx]
    if ret == "indices":
        return idx
    if ret == "both":
        return [values, idx]
    if ret == "mask":
        zeros = n.op("Mul", [x, n.scalar(0.0, x)])
        ones = n.op("Add", [n.op("Mul", [values, n.scalar(0.0, values)]), n.scalar(1.0, values)])
        return n.op("ScatterElements", [zeros, indices, ones], {"axis": axis})
    raise ConversionError(f"unknown ret_typ '{ret}'")


# --------------------------------------------------------------------------------- resizing
@HANDLERS.register("_contrib_BilinearResize2D")
def bilinear_resize(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    mode = n.attrs.str("mode", "size")
    if mode != "size":
        raise ConversionError(f"mode '{mode}' is not supported (only 'size')")
    h, w = n.static_dims(x, [2, 3], "BilinearResize2D")
    sh, sw = n.attrs.float("scale_height", None), n.attrs.float("scale_width", None)
    oh = int(h * sh) if sh is not None else n.attrs.int("height", 1)
    ow = int(w * sw) if sw is not None else n.attrs.int("width", 1)
    ctm = "align_corners" if n.attrs.bool("align_corners", True) else "half_pixel"
    sizes = n.op("Concat", [n.op("Slice", [n.conv.shape_value(x), n.ints([0]), n.ints([2])]), n.ints([oh, ow])],
                 {"axis": 0})
    return n.op("Resize", [x, None, None, sizes], {"mode": "linear", "coordinate_transformation_mode": ctm})


def _adaptive_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages [floor(i*size/out), ceil((i+1)*size/out))."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        s = (i * size) // out
        e = -((-(i + 1) * size) // out)
        m[i, s:e] = 1.0 / (e - s)
    return m


@HANDLERS.register("_contrib_AdaptiveAvgPooling2D", "AdaptiveAvgPooling2D")
def adaptive_avg_pool(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    h, w = n.static_dims(x, [2, 3], "AdaptiveAvgPooling2D")
    size = n.attrs.tuple("output_size", (1,))
    size = [size] if isinstance(size, int) else list(size)
    oh, ow = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    if (oh, ow) == (1, 1):
        return n.op("GlobalAveragePool", [x])
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return n.op("AveragePool", [x], {"kernel_shape": k, "strides": k})
    # windows of unequal size: averaging matrices on both axes
    y = n.op("MatMul", [x, n.const(_adaptive_matrix(w, ow).T.copy())])  # (N, C, H, ow)
    return n.op("MatMul", [n.const(_adaptive_matrix(h, oh)), y])  # (N, C, oh, ow)


# ---------------------------------------------------------------------------- ROI pooling
def _pooled(n: NodeCtx) -> tuple[int, int]:
    p = n.attrs.tuple("pooled_size")
    p = [p] if isinstance(p, int) else list(p)
    return (int(p[0]), int(p[-1]))


@HANDLERS.register("ROIPooling")
def roi_pooling(n: NodeCtx) -> ir.Value:
    ph, pw = _pooled(n)
    rois = n.op("Reshape", [n.input(1), n.ints([-1, 5])])
    return n.op("MaxRoiPool", [n.input(0), rois], {"pooled_shape": [ph, pw],
                                                   "spatial_scale": n.attrs.float("spatial_scale")})


@HANDLERS.register("_contrib_ROIAlign")
def roi_align(n: NodeCtx) -> ir.Value:
    if n.attrs.bool("position_sensitive", False):
        raise ConversionError("position_sensitive ROIAlign is not supported")
    ph, pw = _pooled(n)
    rois = n.op("Reshape", [n.input(1), n.ints([-1, 5])])
    boxes = n.op("Slice", [rois, n.ints([1]), n.ints([5]), n.ints([1])])
    batch = n.op("Cast", [n.op("Reshape", [n.op("Slice", [rois, n.ints([0]), n.ints([1]), n.ints([1])]),
                                           n.ints([-1])])], {"to": ir.DataType.INT64})
    ratio = n.attrs.int("sample_ratio", -1)
    ctm = "half_pixel" if n.attrs.bool("aligned", False) else "output_half_pixel"
    return n.op("RoiAlign", [n.input(0), boxes, batch], {
        "mode": "avg", "output_height": ph, "output_width": pw, "sampling_ratio": max(ratio, 0),
        "spatial_scale": n.attrs.float("spatial_scale"), "coordinate_transformation_mode": ctm})


# ------------------------------------------------------------------------------ boxes
@HANDLERS.register("_contrib_box_decode")
def box_decode(n: NodeCtx) -> ir.Value:
    """Offsets (B, N, 4) against anchors (1, N, 4) -> corner boxes (B, N, 4)."""
    x, anchors = n.input(0), n.input(1)
    stds = [n.attrs.float(f"std{i}", 1.0) for i in range(4)]
    clip = n.attrs.float("clip", -1.0)
    fmt = n.attrs.str("format", "center")

    def comp(v: ir.Value, i: int) -> ir.Value:
        return n.op("Slice", [v, n.ints([i]), n.ints([i + 1]), n.ints([-1])])

    a = [comp(anchors, i) for i in range(4)]
    half = n.scalar(0.5, x)
    if fmt == "corner":
        aw, ah = n.op("Sub", [a[2], a[0]]), n.op("Sub", [a[3], a[1]])
        ax, ay = n.op("Add", [a[0], n.op("Mul", [half, aw])]), n.op("Add", [a[1], n.op("Mul", [half, ah])])
    elif fmt == "center":
        ax, ay, aw, ah = a
    else:
        raise ConversionError(f"unknown format '{fmt}'")
    d = [n.op("Mul", [comp(x, i), n.scalar(stds[i], x)]) for i in range(4)]
    ox = n.op("Add", [n.op("Mul", [d[0], aw]), ax])
    oy = n.op("Add", [n.op("Mul", [d[1], ah]), ay])
    dw, dh = d[2], d[3]
    if clip > 0:
        dw, dh = n.op("Min", [dw, n.scalar(clip, x)]), n.op("Min", [dh, n.scalar(clip, x)])
    ow = n.op("Mul", [n.op("Mul", [n.op("Exp", [dw]), aw]), half])
    oh = n.op("Mul", [n.op("Mul", [n.op("Exp", [dh]), ah]), half])
    return n.op("Concat", [n.op("Sub", [ox, ow]), n.op("Sub", [oy, oh]), n.op("Add", [ox, ow]),
                           n.op("Add", [oy, oh])], {"axis": -1})


@HANDLERS.register("_contrib_MultiBoxPrior", "MultiBoxPrior")
def multibox_prior(n: NodeCtx) -> ir.Value:
    """Anchors (1, H*W*A, 4) for the feature map's static size (MXNet's loop, float32)."""
    x = n.input(0)
    h, w = n.static_dims(x, [2, 3], "MultiBoxPrior")
    sizes = [float(s) for s in np.atleast_1d(n.attrs.tuple("sizes", (1.0,)))]
    ratios = [float(r) for r in np.atleast_1d(n.attrs.tuple("ratios", (1.0,)))]
    steps = [float(s) for s in np.atleast_1d(n.attrs.tuple("steps", (-1.0, -1.0)))]
    offsets = [float(o) for o in np.atleast_1d(n.attrs.tuple("offsets", (0.5, 0.5)))]
    f = np.float32
    step_y = f(steps[0]) if steps[0] > 0 else f(1.0) / f(h)
    step_x = f(steps[1]) if steps[1] > 0 else f(1.0) / f(w)
    out = []
    for r in range(h):
        cy = (f(r) + f(offsets[0])) * step_y
        for c in range(w):
            cx = (f(c) + f(offsets[1])) * step_x
            shapes = [(s, ratios[0]) for s in sizes] + [(sizes[0], rt) for rt in ratios[1:]]
            for size, ratio in shapes:
                sr = f(math.sqrt(ratio))
                bw = f(size) * f(h) / f(w) * sr / f(2)
                bh = f(size) / sr / f(2)
                out.append([cx - bw, cy - bh, cx + bw, cy + bh])
    anchors = np.asarray(out, dtype=np.float32).reshape(1, -1, 4)
    if n.attrs.bool("clip", False):
        anchors = np.clip(anchors, 0.0, 1.0)
    return n.const(anchors)
