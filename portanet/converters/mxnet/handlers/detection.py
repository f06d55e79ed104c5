"""Detection ops (contrib) and the generic tensor ops detector post-processing uses:
_contrib_box_nms, _contrib_box_decode, _contrib_ROIAlign, ROIPooling, _contrib_BilinearResize2D,
_contrib_AdaptiveAvgPooling2D, _contrib_MultiBoxPrior, _contrib_MultiBoxDetection; _arange,
where, comparison ops with a scalar or broadcast (float 0/1 results, as MXNet), broadcast_mod
(Python-style modulo, 0 for a zero divisor), slice_like, repeat, tile, topk, gather_nd,
broadcast_axis, broadcast_like, shape_array, reverse, round/rint/fix.

The NMS-based ops rank their candidates first (TopK, ties to the lower index) and give
``NonMaxSuppression`` rank scores, so its visiting order is exactly MXNet's sorted order.
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


@HANDLERS.register("_contrib_box_nms", "_contrib_box_non_maximum_suppression")
def box_nms(n: NodeCtx) -> list[ir.Value]:
    """Rows (..., N, K) sorted by descending score (ties: lower index first); rows below
    ``valid_thresh``, of ``background_id`` (-1 by default), past ``topk`` or suppressed (IoU > ``overlap_thresh``
    with a kept row of the same id, or any id with ``force_suppress``) become -1 and follow the
    kept ones. Lowered to ONNX NonMaxSuppression on rank scores (one class per id)."""
    x = n.input(0)
    dims = n.dims(x)
    if dims is None or len(dims) < 2 or not isinstance(dims[-1], int):
        raise ConversionError(f"expected (..., N, K) boxes with a static K, received {dims}")
    k_width = dims[-1]
    thr = n.attrs.float("overlap_thresh", 0.5)
    valid_thr = n.attrs.float("valid_thresh", 0.0)
    topk = n.attrs.int("topk", -1)
    cs, si, ii = n.attrs.int("coord_start", 2), n.attrs.int("score_index", 1), n.attrs.int("id_index", -1)
    bg = n.attrs.int("background_id", -1)
    force = n.attrs.bool("force_suppress", False)
    in_fmt, out_fmt = n.attrs.str("in_format", "corner"), n.attrs.str("out_format", "corner")
    data = n.op("Reshape", [x, _shape_parts(n, x, [-1, (len(dims) - 2, len(dims))])])  # (B, N, K)

    def col(i: int) -> ir.Value:  # (B, N)
        return n.op("Squeeze", [n.op("Slice", [data, n.ints([i]), n.ints([i + 1]), n.ints([2])]), n.ints([2])])

    score = col(si)
    valid = n.op("Greater", [score, n.scalar(valid_thr, score)])
    if ii >= 0:  # rows of the background id (default -1: GluonCV's padding rows) are never valid
        valid = n.op("And", [valid, n.op("Not", [n.op("Equal", [col(ii), n.scalar(float(bg), score)])])])
    neg_inf = n.scalar(-np.inf, score)
    keyed = n.op("Where", [valid, score, neg_inf])
    n_dim = n.op("Slice", [n.op("Shape", [data]), n.ints([1]), n.ints([2])])
    sorted_s, order = n.op("TopK", [keyed, n_dim], {"axis": 1, "largest": 1, "sorted": 1}, outputs=2)  # (B, N)
    rows = n.op("GatherElements", [data, n.op("Expand", [n.op("Unsqueeze", [order, n.ints([2])]),
                                                         n.op("Shape", [data])])], {"axis": 1})  # sorted rows
    ok = n.op("Greater", [sorted_s, neg_inf])
    pos = n.op("Range", [n.const(np.asarray(0, np.int64)),
                         n.op("Squeeze", [n_dim, n.ints([0])]), n.const(np.asarray(1, np.int64))])
    if topk > 0:
        ok = n.op("And", [ok, n.op("Less", [n.op("Unsqueeze", [pos, n.ints([0])]), n.ints([topk])])])
    n_f = n.op("Cast", [n_dim], {"to": _FLOAT})
    rank = n.op("Sub", [n_f, n.op("Cast", [pos], {"to": _FLOAT})])  # N, N-1, ..., 1
    rank = n.op("Where", [ok, n.op("Unsqueeze", [rank, n.ints([0])]), n.const(np.asarray(0.0, np.float32))])
    coords = n.op("Slice", [rows, n.ints([cs]), n.ints([cs + 4]), n.ints([2])])  # (B, N, 4)
    if in_fmt == "center":
        cxy = n.op("Slice", [coords, n.ints([0]), n.ints([2]), n.ints([2])])
        half = n.op("Mul", [n.op("Slice", [coords, n.ints([2]), n.ints([4]), n.ints([2])]), n.scalar(0.5, score)])
        coords = n.op("Concat", [n.op("Sub", [cxy, half]), n.op("Add", [cxy, half])], {"axis": 2})
    # (y1, x1, y2, x2) vs (x1, y1, x2, y2) does not change IoU
    coords = n.op("Cast", [coords], {"to": _FLOAT})
    if ii >= 0 and not force:
        ids = n.op("Squeeze", [n.op("Slice", [rows, n.ints([ii]), n.ints([ii + 1]), n.ints([2])]), n.ints([2])])
        ids = n.op("Where", [ok, n.op("Cast", [ids], {"to": ir.DataType.INT64}), n.const(np.asarray(0, np.int64))])
        depth = n.op("Add", [n.op("ReduceMax", [ids], {"keepdims": 0}), n.const(np.asarray(1, np.int64))])
        onehot = n.op("OneHot", [ids, depth, n.const(np.asarray([0.0, 1.0], np.float32))], {"axis": 1})  # (B, C, N)
        scores = n.op("Mul", [onehot, n.op("Unsqueeze", [rank, n.ints([1])])])
    else:
        scores = n.op("Unsqueeze", [rank, n.ints([1])])
    sel = n.op("NonMaxSuppression", [coords, scores, n.op("Cast", [n_dim], {"to": ir.DataType.INT64}),
                                     n.const(np.asarray([thr], np.float32)), n.const(np.asarray([0.5], np.float32))])
    where = n.op("Gather", [sel, n.ints([0, 2])], {"axis": 1})
    zeros = n.op("ConstantOfShape", [n.op("Shape", [sorted_s])], {"value": ir.tensor(np.zeros(1, np.float32))})
    ones = n.op("ConstantOfShape", [n.op("Slice", [n.op("Shape", [sel]), n.ints([0]), n.ints([1])])],
                {"value": ir.tensor(np.ones(1, np.float32))})
    kept = n.op("ScatterND", [zeros, where, ones])  # (B, N) 1 = kept, in sorted order
    # kept rows first (in score order), then the others as -1
    key = n.op("Add", [n.op("Cast", [pos], {"to": _FLOAT}), n.op("Mul", [n.op("Sub", [n.scalar(1.0, kept), kept]), n_f])])
    _, perm = n.op("TopK", [key, n_dim], {"axis": 1, "largest": 0, "sorted": 1}, outputs=2)
    rows = n.op("GatherElements", [rows, n.op("Expand", [n.op("Unsqueeze", [perm, n.ints([2])]),
                                                         n.op("Shape", [rows])])], {"axis": 1})
    kept = n.op("GatherElements", [kept, perm], {"axis": 1})
    if out_fmt != in_fmt:
        c = n.op("Slice", [rows, n.ints([cs]), n.ints([cs + 4]), n.ints([2])])
        a, b = (n.op("Slice", [c, n.ints([0]), n.ints([2]), n.ints([2])]),
                n.op("Slice", [c, n.ints([2]), n.ints([4]), n.ints([2])]))
        half = n.scalar(0.5, score)
        if in_fmt == "corner":  # -> center
            conv = n.op("Concat", [n.op("Mul", [n.op("Add", [a, b]), half]), n.op("Sub", [b, a])], {"axis": 2})
        else:  # center -> corner
            hw = n.op("Mul", [b, half])
            conv = n.op("Concat", [n.op("Sub", [a, hw]), n.op("Add", [a, hw])], {"axis": 2})
        parts = [p for p in (n.op("Slice", [rows, n.ints([0]), n.ints([cs]), n.ints([2])]) if cs > 0 else None, conv,
                             n.op("Slice", [rows, n.ints([cs + 4]), n.ints([k_width]), n.ints([2])])
                             if cs + 4 < k_width else None) if p is not None]
        rows = n.op("Concat", parts, {"axis": 2}) if len(parts) > 1 else parts[0]
    mask = n.op("Greater", [n.op("Unsqueeze", [kept, n.ints([2])]), n.scalar(0.5, score)])
    out = n.op("Where", [mask, rows, n.scalar(-1.0, x)])
    out = n.op("Reshape", [out, n.conv.shape_value(x)])
    # MXNet's second (hidden) output holds the sorted indices: the boxes are 'output0'
    return [out, n.op("Cast", [order], {"to": _FLOAT})]


@HANDLERS.register("_contrib_MultiBoxDetection", "MultiBoxDetection")
def multibox_detection(n: NodeCtx) -> ir.Value:
    """Class probabilities (B, C, N), offsets (B, N*4) and anchors (1, N, 4) -> (B, N, 6) rows
    [id, score, x1, y1, x2, y2]: per anchor the best non-background class (first maximum) if its
    probability reaches ``threshold``, boxes decoded with the variances (and clipped), sorted
    by descending score (only the first ``nms_topk`` are sorted into place; later valid rows
    keep anchor order, as MXNet), NMS per id (or across ids with ``force_suppress``) over the
    first ``nms_topk``; suppressed rows keep their values with id -1; the remaining rows are -1."""
    prob, loc, anchors = n.input(0), n.input(1), n.input(2)
    if n.attrs.int("background_id", 0) != 0:
        raise ConversionError("background_id other than 0 is not supported")
    clip = n.attrs.bool("clip", True)
    thr = n.attrs.float("threshold", 0.01)
    nms_thr = n.attrs.float("nms_threshold", 0.5)
    force = n.attrs.bool("force_suppress", False)
    var = [float(v) for v in np.atleast_1d(n.attrs.tuple("variances", (0.1, 0.1, 0.2, 0.2)))]
    topk = n.attrs.int("nms_topk", -1)
    n_cls = n.static_dims(prob, [1], "MultiBoxDetection")[0]
    if n_cls < 2:
        raise ConversionError("expected at least one class besides the background")
    fg = n.op("Slice", [prob, n.ints([1]), n.ints([n_cls]), n.ints([1])])  # (B, C-1, N)
    score = n.op("ReduceMax", [fg, n.ints([1])], {"keepdims": 0})  # (B, N)
    cls = n.op("Cast", [n.op("ArgMax", [fg], {"axis": 1, "keepdims": 0})], {"to": _FLOAT})  # id - 1
    valid = n.op("Not", [n.op("Less", [score, n.scalar(thr, score)])])
    # decode (MXNet's TransformLocations): anchors are corners
    a = n.op("Reshape", [anchors, n.ints([1, -1, 4])])
    p = n.op("Reshape", [loc, n.ints([0, -1, 4])])

    def c(v: ir.Value, i: int) -> ir.Value:
        return n.op("Slice", [v, n.ints([i]), n.ints([i + 1]), n.ints([2])])

    aw, ah = n.op("Sub", [c(a, 2), c(a, 0)]), n.op("Sub", [c(a, 3), c(a, 1)])
    half = n.scalar(0.5, score)
    ax = n.op("Mul", [n.op("Add", [c(a, 0), c(a, 2)]), half])
    ay = n.op("Mul", [n.op("Add", [c(a, 1), c(a, 3)]), half])
    ox = n.op("Add", [n.op("Mul", [n.op("Mul", [c(p, 0), n.scalar(var[0], score)]), aw]), ax])
    oy = n.op("Add", [n.op("Mul", [n.op("Mul", [c(p, 1), n.scalar(var[1], score)]), ah]), ay])
    ow = n.op("Mul", [n.op("Mul", [n.op("Exp", [n.op("Mul", [c(p, 2), n.scalar(var[2], score)])]), aw]), half])
    oh = n.op("Mul", [n.op("Mul", [n.op("Exp", [n.op("Mul", [c(p, 3), n.scalar(var[3], score)])]), ah]), half])
    boxes = n.op("Concat", [n.op("Sub", [ox, ow]), n.op("Sub", [oy, oh]), n.op("Add", [ox, ow]),
                            n.op("Add", [oy, oh])], {"axis": 2})  # (B, N, 4)
    if clip:
        boxes = n.op("Clip", [boxes, n.scalar(0.0, score), n.scalar(1.0, score)])
    rows = n.op("Concat", [n.op("Unsqueeze", [cls, n.ints([2])]), n.op("Unsqueeze", [score, n.ints([2])]), boxes],
                {"axis": 2})  # (B, N, 6)
    neg_inf = n.scalar(-np.inf, score)
    n_dim = n.op("Slice", [n.op("Shape", [score]), n.ints([1]), n.ints([2])])
    sorted_s, order = n.op("TopK", [n.op("Where", [valid, score, neg_inf]), n_dim],
                           {"axis": 1, "largest": 1, "sorted": 1}, outputs=2)

    def gather_rows(idx: ir.Value) -> ir.Value:
        return n.op("GatherElements", [rows, n.op("Expand", [n.op("Unsqueeze", [idx, n.ints([2])]),
                                                             n.op("Shape", [rows])])], {"axis": 1})

    ok = n.op("Greater", [sorted_s, neg_inf])  # (B, N): the valid rows, first in sorted order
    pos = n.op("Range", [n.const(np.asarray(0, np.int64)), n.op("Squeeze", [n_dim, n.ints([0])]),
                         n.const(np.asarray(1, np.int64))])
    sorted_rows = gather_rows(order)
    cand = ok
    if topk > 0:
        first = n.op("Less", [n.op("Unsqueeze", [pos, n.ints([0])]), n.ints([topk])])
        cand = n.op("And", [ok, first])
        # MXNet sorts only the first nms_topk into place: later valid rows stay in anchor order
        pos_f = n.op("Cast", [n.op("Unsqueeze", [pos, n.ints([0])])], {"to": _FLOAT})
        invalid = n.op("Cast", [n.op("Not", [valid])], {"to": _FLOAT})
        key = n.op("Add", [pos_f, n.op("Mul", [invalid, n.op("Cast", [n_dim], {"to": _FLOAT})])])
        _, compact = n.op("TopK", [key, n_dim], {"axis": 1, "largest": 0, "sorted": 1}, outputs=2)
        sorted_rows = n.op("Where", [n.op("Unsqueeze", [first, n.ints([2])]), sorted_rows, gather_rows(compact)])
    rows = sorted_rows
    n_f = n.op("Cast", [n_dim], {"to": _FLOAT})
    rank = n.op("Sub", [n_f, n.op("Cast", [pos], {"to": _FLOAT})])
    rank = n.op("Where", [cand, n.op("Unsqueeze", [rank, n.ints([0])]), n.const(np.asarray(0.0, np.float32))])
    coords = n.op("Slice", [rows, n.ints([2]), n.ints([6]), n.ints([2])])
    if force:
        scores = n.op("Unsqueeze", [rank, n.ints([1])])
    else:
        ids = n.op("Cast", [n.op("Squeeze", [n.op("Slice", [rows, n.ints([0]), n.ints([1]), n.ints([2])]),
                                              n.ints([2])])], {"to": ir.DataType.INT64})
        ids = n.op("Where", [cand, ids, n.const(np.asarray(0, np.int64))])
        onehot = n.op("OneHot", [ids, n.const(np.asarray(n_cls - 1, np.int64)),
                                 n.const(np.asarray([0.0, 1.0], np.float32))], {"axis": 1})
        scores = n.op("Mul", [onehot, n.op("Unsqueeze", [rank, n.ints([1])])])
    sel = n.op("NonMaxSuppression", [coords, scores, n.op("Cast", [n_dim], {"to": ir.DataType.INT64}),
                                     n.const(np.asarray([nms_thr], np.float32)),
                                     n.const(np.asarray([0.5], np.float32))])
    zeros = n.op("ConstantOfShape", [n.op("Shape", [sorted_s])], {"value": ir.tensor(np.zeros(1, np.float32))})
    ones = n.op("ConstantOfShape", [n.op("Slice", [n.op("Shape", [sel]), n.ints([0]), n.ints([1])])],
                {"value": ir.tensor(np.ones(1, np.float32))})
    kept = n.op("Greater", [n.op("ScatterND", [zeros, n.op("Gather", [sel, n.ints([0, 2])], {"axis": 1}), ones]),
                            n.scalar(0.5, score)])  # (B, N)
    minus = n.scalar(-1.0, score)
    idcol = n.op("Where", [kept, n.op("Squeeze", [c(rows, 0), n.ints([2])]), minus])
    rows = n.op("Concat", [n.op("Unsqueeze", [idcol, n.ints([2])]), n.op("Slice", [rows, n.ints([1]), n.ints([6]),
                                                                                   n.ints([2])])], {"axis": 2})
    return n.op("Where", [n.op("Unsqueeze", [ok, n.ints([2])]), rows, minus])
