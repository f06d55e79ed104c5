"""Shape ops: Flatten/Reshape (Flatten, Reshape layers; channels-last flattening kept as a
FlatView), Transpose (a layout change only), Concat (Concatenate), Squeeze/Unsqueeze, Slice,
Split, Pad (ZeroPadding2D), Resize/Upsample (UpSampling2D) and the reductions."""

from __future__ import annotations

import numpy as np

from portanet.export.graph import attr
from portanet.export.keras_build.builder import (
    NHWC,
    FlatView,
    KerasBuilder,
    Out,
    Unsupported,
    compose,
    handler,
)


def _flatten_batch(b: KerasBuilder, node, v):
    """(N, d1, ..., dk) -> (N, d1*...*dk) keeping the batch symbolic."""
    e = b.entry(v)
    dims = b.g.shape(v)
    if isinstance(e, Out) and e.perm is not None and dims is not None and len(dims) == 4 \
            and all(isinstance(d, int) for d in dims[1:]):
        c, h, w = dims[1:]
        kdims = [dims[p] for p in e.perm]
        # Keras' flat position k holds IR element order[k]
        order = np.arange(c * h * w).reshape(c, h, w).transpose([p - 1 for p in e.perm[1:]]).reshape(-1)
        del kdims
        layer = b.layers.Flatten(name=b.name())
        t = layer(e.tensor)
        return FlatView(t, e.tensor, e.perm, order)
    return b.apply(b.layers.Flatten(name=b.name()), b.get(v, None), None, None)


@handler("Flatten")
def flatten(b: KerasBuilder, node):
    axis = int(attr(node, "axis", 1))
    rank = b.g.rank(node.inputs[0])
    if rank is not None and axis < 0:
        axis += rank
    if axis != 1:
        raise Unsupported(f"axis {axis} (the batch would change)")
    return _flatten_batch(b, node, node.inputs[0])


@handler("Reshape")
def reshape(b: KerasBuilder, node):
    x = node.inputs[0]
    in_dims, out_dims = b.g.shape(x), b.g.shape(node.outputs[0])
    if out_dims is None or not all(isinstance(d, int) for d in out_dims[1:]):
        raise Unsupported("unknown output sizes")
    if in_dims is None or in_dims[0] != out_dims[0]:
        raise Unsupported("reshaping the batch axis")
    if len(out_dims) == 2:
        return _flatten_batch(b, node, x)
    layer = b.layers.Reshape(tuple(out_dims[1:]), name=b.name())
    return b.apply(layer, b.get(x, None), None, None)


@handler("Transpose")
def transpose(b: KerasBuilder, node):
    rank = b.g.rank(node.inputs[0])
    perm = attr(node, "perm")
    perm = list(perm) if perm is not None else list(reversed(range(rank or 0)))
    if perm[0] != 0:
        raise Unsupported("moving the batch axis")
    e = b.entry(node.inputs[0])
    if not isinstance(e, Out):
        e = Out(b.get(node.inputs[0], None), None)
    return Out(e.tensor, compose(e.perm, perm))


@handler("Concat")
def concat(b: KerasBuilder, node):
    rank = b.g.rank(node.outputs[0])
    if rank is None:
        raise Unsupported("unknown rank")
    axis = int(attr(node, "axis")) % rank
    if any(b.is_const(v) for v in node.inputs):
        raise Unsupported("constant inputs")
    xs, perm = b.same_layout(list(node.inputs))
    kaxis = (perm or tuple(range(rank))).index(axis)
    if len(xs) == 1:
        return Out(xs[0], perm)
    return b.apply(b.layers.Concatenate(axis=kaxis, name=b.name()), xs, None, perm)


def _reshape_to(b: KerasBuilder, node):
    out_dims = b.g.shape(node.outputs[0])
    if out_dims is None or not all(isinstance(d, int) for d in out_dims[1:]) or not isinstance(out_dims[0], str | int):
        raise Unsupported("unknown output sizes")
    in_dims = b.g.shape(node.inputs[0])
    if in_dims is None or in_dims[0] != out_dims[0]:
        raise Unsupported("the batch axis changes")
    layer = b.layers.Reshape(tuple(out_dims[1:]) or (1,), name=b.name())
    if not out_dims[1:]:
        raise Unsupported("rank-1 result")
    return b.apply(layer, b.get(node.inputs[0], None), None, None)


handler("Squeeze", "Unsqueeze")(_reshape_to)


@handler("Slice")
def slice_(b: KerasBuilder, node):
    rank = b.g.rank(node.inputs[0])
    consts = [b.g.ints(v) if v is not None else None for v in node.inputs[1:5]]
    starts, ends = consts[0], consts[1]
    if starts is None or ends is None or rank is None:
        raise Unsupported("run-time bounds")
    axes = consts[2] if len(consts) > 2 and consts[2] is not None else list(range(len(starts)))
    steps = consts[3] if len(consts) > 3 and consts[3] is not None else [1] * len(starts)
    e = b.entry(node.inputs[0])
    perm = e.perm if isinstance(e, Out) else None
    x = b.get(node.inputs[0], perm)
    index = [slice(None)] * rank
    for s, t, a, st in zip(starts, ends, axes, steps):
        a %= rank
        if a == 0 or st <= 0:
            raise Unsupported("slicing the batch or a negative step")
        k = (perm or tuple(range(rank))).index(a)
        index[k] = slice(s, None if t >= 2**62 else t, st)
    return Out(x[tuple(index)], perm)


@handler("Split")
def split(b: KerasBuilder, node):
    rank = b.g.rank(node.inputs[0])
    dims = b.g.shape(node.inputs[0])
    axis = int(attr(node, "axis", 0)) % (rank or 1)
    if rank is None or axis == 0:
        raise Unsupported("splitting the batch or unknown rank")
    sizes = b.g.ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if sizes is None:
        n = len(node.outputs)
        if not isinstance(dims[axis], int):
            raise Unsupported("unknown size")
        size = -(-dims[axis] // n)
        sizes = [min(size, dims[axis] - i * size) for i in range(n)]
    e = b.entry(node.inputs[0])
    perm = e.perm if isinstance(e, Out) else None
    x = b.get(node.inputs[0], perm)
    k = (perm or tuple(range(rank))).index(axis)
    outs, start = [], 0
    for s in sizes:
        index = [slice(None)] * rank
        index[k] = slice(start, start + s)
        outs.append(Out(x[tuple(index)], perm))
        start += s
    return outs


@handler("Pad")
def pad(b: KerasBuilder, node):
    if attr(node, "mode", "constant") != "constant":
        raise Unsupported(f"mode {attr(node, 'mode')}")
    pads = b.g.ints(node.inputs[1])
    rank = b.g.rank(node.inputs[0])
    if pads is None or rank is None:
        raise Unsupported("run-time pads")
    axes = b.g.ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(rank))
    k = len(axes)
    full = [[0, 0] for _ in range(rank)]
    for a, p0, p1 in zip(axes, pads[:k], pads[k:]):
        full[a % rank] = [p0, p1]
    value = b.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    v = float(value.reshape(-1)[0]) if value is not None else 0.0
    if rank == 4 and full[0] == full[1] == [0, 0] and v == 0.0:
        x = b.get(node.inputs[0], NHWC)
        layer = b.layers.ZeroPadding2D((tuple(full[2]), tuple(full[3])), name=b.name())
        return b.apply(layer, x, None, NHWC)
    e = b.entry(node.inputs[0])
    perm = e.perm if isinstance(e, Out) else None
    kp = [full[p] for p in perm] if perm else full
    return Out(b.ops.pad(b.get(node.inputs[0], perm), kp, constant_values=v), perm)


@handler("Resize", "Upsample")
def resize(b: KerasBuilder, node):
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    dims, out_dims = b.g.shape(node.inputs[0]), b.g.shape(node.outputs[0])
    if dims is None or out_dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[2:] + out_dims[2:]):
        raise Unsupported("not 4-D with known sizes")
    sh, sw = out_dims[2] / dims[2], out_dims[3] / dims[3]
    if sh != int(sh) or sw != int(sw):
        raise Unsupported("non-integer scale")
    if mode == "nearest":
        if ctm != "asymmetric" or (node.op_type == "Resize" and attr(node, "nearest_mode", "round_prefer_floor") != "floor"):
            raise Unsupported(f"nearest with {ctm}")
        interp = "nearest"
    elif mode in ("linear", "bilinear") and ctm in ("half_pixel", "pytorch_half_pixel"):
        interp = "bilinear"
    else:
        raise Unsupported(f"{mode} with {ctm}")
    layer = b.layers.UpSampling2D((int(sh), int(sw)), interpolation=interp, name=b.name())
    return b.apply(layer, b.get(node.inputs[0], NHWC), None, NHWC)


def _reduce(name: str):
    def emit(b: KerasBuilder, node):
        rank = b.g.rank(node.inputs[0])
        if rank is None:
            raise Unsupported("unknown rank")
        axes = b.g.ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else attr(node, "axes")
        axes = sorted(a % rank for a in (axes or range(rank)))
        keep = bool(int(attr(node, "keepdims", 1)))
        if 0 in axes:
            raise Unsupported("reducing the batch")
        if name == "mean" and rank == 4 and axes == [2, 3]:
            layer = b.layers.GlobalAveragePooling2D(keepdims=keep, name=b.name())
            return b.apply(layer, b.get(node.inputs[0], NHWC), None, NHWC if keep else None)
        e = b.entry(node.inputs[0])
        perm = e.perm if isinstance(e, Out) else None
        if not keep:
            perm = None
        x = b.get(node.inputs[0], perm)
        kaxes = tuple((perm or tuple(range(rank))).index(a) for a in axes)
        return Out(getattr(b.ops, name)(x, axis=kaxes, keepdims=keep), perm)

    return emit


for _op, _name in {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min"}.items():
    handler(_op)(_reduce(_name))
