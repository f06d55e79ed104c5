"""Shape ops: Flatten, Reshape (special codes, reverse, legacy target_shape), transpose,
expand_dims, squeeze, slice_axis, slice, SliceChannel/split, Concat, Crop, Pad."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS
from portanet.errors import ConversionError

_INT_MAX = np.iinfo(np.int64).max
_INT_MIN = np.iinfo(np.int64).min


@HANDLERS.register("Flatten", "flatten")
def flatten(n: NodeCtx) -> ir.Value:
    # (N, d1, d2, ...) -> (N, d1*d2*...) for any rank
    return n.op("Flatten", [n.input(0)], {"axis": 1})


# A Reshape output dim is one of: ("const", v), ("dims", [input axes]) = their product,
# ("infer",) = ONNX -1, ("split", axis, other) = input dim / other.
Piece = tuple


def _reshape_pieces(codes: Sequence[int], rank: int) -> list[Piece]:
    """MXNet's Reshape codes -> output pieces (codes 0 -1 -2 -3 -4 as in InferReshapeShape)."""
    out: list[Piece] = []
    src = 0
    i = 0
    while i < len(codes):
        c = codes[i]
        if c > 0:
            out.append(("const", c))
            src += 1
        elif c == 0:
            out.append(("dims", [src]))
            src += 1
        elif c == -1:
            out.append(("infer",))
            src += 1
        elif c == -2:
            out.extend(("dims", [j]) for j in range(src, rank))
            src = rank
        elif c == -3:
            out.append(("dims", [src, src + 1]))
            src += 2
        elif c == -4:
            if i + 2 >= len(codes):
                raise ConversionError(f"Reshape code -4 needs two following values, received shape={tuple(codes)}")
            d1, d2 = codes[i + 1], codes[i + 2]
            if d1 == -1 and d2 == -1:
                raise ConversionError("Reshape code -4 cannot infer both split factors")
            out.append(("split", src, d2) if d1 == -1 else ("const", d1))
            out.append(("split", src, d1) if d2 == -1 else ("const", d2))
            src += 1
            i += 2
        else:
            raise ConversionError(f"unknown Reshape code {c} in shape={tuple(codes)}")
        i += 1
    if sum(1 for p in out if p[0] == "infer") > 1:
        raise ConversionError(f"Reshape shape={tuple(codes)} has more than one -1")
    return out


def _shape_tensor(n: NodeCtx, x: ir.Value, pieces: list[Piece]) -> ir.Value:
    """The ONNX target shape: a constant when every piece is static, else a Concat."""
    dims = n.dims(x) or []
    static: list[int] = []
    for p in pieces:
        if p[0] == "const":
            static.append(p[1])
        elif p[0] == "infer":
            static.append(-1)
        elif p[0] == "dims" and all(j < len(dims) and isinstance(dims[j], int) for j in p[1]):
            static.append(int(np.prod([dims[j] for j in p[1]])))
        elif p[0] == "split" and p[1] < len(dims) and isinstance(dims[p[1]], int):
            static.append(dims[p[1]] // p[2])
        else:
            break
    else:
        return n.ints(static)
    parts = []
    for p in pieces:
        if p[0] == "const":
            parts.append(n.ints([p[1]]))
        elif p[0] == "infer":
            parts.append(n.ints([-1]))
        elif p[0] == "dims":
            v = n.dim(x, p[1][0])
            for j in p[1][1:]:
                v = n.op("Mul", [v, n.dim(x, j)])
            parts.append(v)
        else:
            parts.append(n.op("Div", [n.dim(x, p[1]), n.ints([p[2]])]))
    return n.op("Concat", parts, {"axis": 0})


@HANDLERS.register("Reshape", "reshape")
def reshape(n: NodeCtx) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    codes = a.tuple("shape", ())
    target = a.tuple("target_shape", ())
    if not codes and target:
        # legacy target_shape: plain dims where 0 means "infer"
        if a.bool("keep_highest", False):
            raise ConversionError("legacy Reshape keep_highest=True is not supported")
        pieces = [("infer",) if d == 0 else ("const", d) for d in target]
        if sum(1 for d in target if d == 0) > 1:
            raise ConversionError(f"legacy Reshape target_shape={target} has more than one 0")
        return n.op("Reshape", [x, _shape_tensor(n, x, pieces)])
    if not codes:
        raise ConversionError("expected a non-empty shape attribute")
    rank = n.rank(x)
    if a.bool("reverse", False):
        # match the codes right to left: reverse the codes and the input axes, then the result
        pieces = _reshape_pieces(list(reversed(codes)), rank)
        flip = rank - 1
        pieces = [
            (p[0], [flip - j for j in p[1]]) if p[0] == "dims"
            else ("split", flip - p[1], p[2]) if p[0] == "split" else p
            for p in reversed(pieces)
        ]
    else:
        pieces = _reshape_pieces(codes, rank)
    return n.op("Reshape", [x, _shape_tensor(n, x, pieces)])


@HANDLERS.register("transpose")
def transpose(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    axes = n.attrs.tuple("axes", ())
    if not axes:
        axes = tuple(reversed(range(n.rank(x))))  # empty axes reverses all
    return n.op("Transpose", [x], {"perm": list(axes)})


@HANDLERS.register("SwapAxis", "swapaxes")
def swapaxes(n: NodeCtx) -> ir.Value:
    x = n.input(0)
    rank = n.rank(x)
    d1, d2 = n.attrs.int("dim1", 0) % rank, n.attrs.int("dim2", 0) % rank
    perm = list(range(rank))
    perm[d1], perm[d2] = perm[d2], perm[d1]
    return n.op("Transpose", [x], {"perm": perm})


@HANDLERS.register("expand_dims")
def expand_dims(n: NodeCtx) -> ir.Value:
    return n.op("Unsqueeze", [n.input(0), n.ints([n.attrs.int("axis")])])


@HANDLERS.register("squeeze")
def squeeze(n: NodeCtx) -> ir.Value:
    axes = n.attrs.tuple("axis", None)
    x = n.input(0)
    return n.op("Squeeze", [x] if axes is None else [x, n.ints(axes)])


@HANDLERS.register("slice_axis")
def slice_axis(n: NodeCtx) -> ir.Value:
    a = n.attrs
    end = a.int("end", None)
    return n.op("Slice", [n.input(0), n.ints([a.int("begin")]), n.ints([_INT_MAX if end is None else end]),
                          n.ints([a.int("axis")])])


@HANDLERS.register("slice", "crop")
def slice_(n: NodeCtx) -> ir.Value:
    a = n.attrs
    begin = a.tuple("begin")
    end = a.tuple("end")
    step = a.tuple("step", ())
    if len(begin) != len(end):
        raise ConversionError(f"expected begin and end of equal length, received {begin} and {end}")
    starts, ends, steps = [], [], []
    for i in range(len(begin)):
        s = step[i] if i < len(step) and step[i] is not None else 1
        b = begin[i] if begin[i] is not None else (0 if s > 0 else _INT_MAX)
        e = end[i] if end[i] is not None else (_INT_MAX if s > 0 else _INT_MIN)
        starts.append(b)
        ends.append(e)
        steps.append(s)
    return n.op("Slice", [n.input(0), n.ints(starts), n.ints(ends), n.ints(range(len(begin))), n.ints(steps)])


@HANDLERS.register("SliceChannel", "split")
def slice_channel(n: NodeCtx) -> list[ir.Value]:
    a = n.attrs
    k = a.int("num_outputs")
    axis = a.int("axis", 1)
    x = n.input(0)
    d = n.dims(x)
    if d is not None and isinstance(d[axis], int) and d[axis] % k:
        raise ConversionError(f"cannot split axis {axis} of size {d[axis]} into {k} equal parts")
    outs = n.op("Split", [x], {"axis": axis, "num_outputs": k}, outputs=k)
    outs = [outs] if k == 1 else list(outs)
    if a.bool("squeeze_axis", False):
        outs = [n.op("Squeeze", [o, n.ints([axis])]) for o in outs]
    return outs


@HANDLERS.register("Concat", "concat")
def concat(n: NodeCtx) -> ir.Value:
    return n.op("Concat", n.inputs(), {"axis": n.attrs.int("dim", 1)})


@HANDLERS.register("Crop")
def crop(n: NodeCtx) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    num_args = a.int("num_args", n.n_inputs)
    if num_args >= 2:
        ref = n.input(1)
        h, w = n.dim(ref, 2), n.dim(ref, 3)  # crop to the second input's H x W
    else:
        hw = a.tuple("h_w", (0, 0))
        if not all(hw):
            raise ConversionError(f"expected h_w with two positive sizes, received {hw}")
        h, w = n.ints([hw[0]]), n.ints([hw[1]])
    size = n.op("Concat", [h, w], {"axis": 0})
    if a.bool("center_crop", False):
        # offset ((H - h) // 2, (W - w) // 2)
        full = n.op("Concat", [n.dim(x, 2), n.dim(x, 3)], {"axis": 0})
        starts = n.op("Div", [n.op("Sub", [full, size]), n.ints([2])])
    else:
        starts = n.ints(a.tuple("offset", (0, 0)))
    ends = n.op("Add", [starts, size])
    return n.op("Slice", [x, starts, ends, n.ints([2, 3])])


@HANDLERS.register("Pad", "pad")
def pad(n: NodeCtx) -> ir.Value:
    a = n.attrs
    mode = a.str("mode", "constant")
    if mode not in ("constant", "edge", "reflect"):
        raise ConversionError(f"expected mode constant, edge or reflect, received '{mode}'")
    width = a.tuple("pad_width")
    if len(width) % 2:
        raise ConversionError(f"expected pad_width with two values per axis, received {width}")
    # MXNet (b0, e0, b1, e1, ...) -> ONNX (b0, b1, ..., e0, e1, ...)
    pads = list(width[0::2]) + list(width[1::2])
    x = n.input(0)
    inputs = [x, n.ints(pads)]
    if mode == "constant":
        inputs.append(n.scalar(a.float("constant_value", 0.0), x))
    return n.op("Pad", inputs, {"mode": mode})
