"""Tensor-shape ops: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice,
Pad, Resize/Upsample and the reductions.

The batch dimension stays symbolic: a reshape target whose leading entry is the batch
(ONNX's 0, or the -1 that absorbs it) is written as ``x.shape[0]`` / ``-1``, never a number.
"""

from __future__ import annotations

from portanet.export.graph import attr
from portanet.export.torch_code.ops.conv import pad_arg
from portanet.export.torch_code.writer import TorchWriter, Unsupported, emitter, literal


def _tuple(v: list[int]) -> str:
    return "(" + ", ".join(map(str, v)) + ("," if len(v) == 1 else "") + ")"


@emitter("Reshape")
def reshape(w: TorchWriter, node):
    x = w.x(node.inputs[0])
    out_dims = w.g.shape(node.outputs[0])
    if out_dims and all(isinstance(d, int) for d in out_dims[1:]) and out_dims[0] is not None:
        # every size is known but the (symbolic) batch: -1 stands for it
        head = str(out_dims[0]) if isinstance(out_dims[0], int) else "-1"
        return f"{x}.reshape({', '.join([head, *map(str, out_dims[1:])])})"
    dims = w.ints(node.inputs[1], "shape")
    allowzero = int(attr(node, "allowzero", 0))
    # ONNX's 0 copies the input's size at that position
    out = [f"{x}.shape[{i}]" if d == 0 and not allowzero else str(d) for i, d in enumerate(dims)]
    return f"{x}.reshape({', '.join(out)})"


@emitter("Flatten")
def flatten(w: TorchWriter, node):
    x = w.x(node.inputs[0])
    axis = int(attr(node, "axis", 1))
    rank = w.g.rank(node.inputs[0])
    if axis < 0:
        if rank is None:
            raise Unsupported("negative axis on unknown rank")
        axis += rank
    if axis == 0:
        return f"{x}.reshape(1, -1)"
    if axis == 1:
        return f"torch.flatten({x}, 1)"
    return f"torch.flatten(torch.flatten({x}, 0, {axis - 1}), 1)"


@emitter("Transpose")
def transpose(w: TorchWriter, node):
    perm = attr(node, "perm")
    if perm is None:
        rank = w.g.rank(node.inputs[0])
        if rank is None:
            raise Unsupported("default perm on unknown rank")
        perm = list(reversed(range(rank)))
    return f"{w.x(node.inputs[0])}.permute({', '.join(str(int(p)) for p in perm)})"


@emitter("Squeeze")
def squeeze(w: TorchWriter, node):
    x = w.x(node.inputs[0])
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return f"{x}.squeeze()"
    return f"{x}.squeeze({_tuple(w.ints(node.inputs[1], 'axes'))})"


@emitter("Unsqueeze")
def unsqueeze(w: TorchWriter, node):
    expr = w.x(node.inputs[0])
    rank = w.g.rank(node.outputs[0])
    axes = w.ints(node.inputs[1], "axes")
    if rank is None and any(a < 0 for a in axes):
        raise Unsupported("negative axes on unknown rank")
    for a in sorted(a % rank if rank else a for a in axes):
        expr = f"{expr}.unsqueeze({a})"
    return expr


@emitter("Concat")
def concat(w: TorchWriter, node):
    xs = ", ".join(w.x(v) for v in node.inputs)
    return f"torch.cat([{xs}], {int(attr(node, 'axis'))})"


@emitter("Split")
def split(w: TorchWriter, node):
    axis = int(attr(node, "axis", 0))
    sizes = w.ints(node.inputs[1], "split") if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if sizes is None:
        dims = w.g.shape(node.inputs[0]) or []
        n = len(node.outputs)
        if axis >= len(dims) or not isinstance(dims[axis], int):
            raise Unsupported("equal split of an unknown size")
        size = -(-dims[axis] // n)
        sizes = [min(size, dims[axis] - i * size) for i in range(n)]
    return [f"torch.split({w.x(node.inputs[0])}, {list(sizes)}, {axis})"]


@emitter("Slice")
def slice_(w: TorchWriter, node):
    x = w.x(node.inputs[0])
    starts, ends = w.ints(node.inputs[1], "starts"), w.ints(node.inputs[2], "ends")
    rank = w.g.rank(node.inputs[0])
    axes = w.ints(node.inputs[3], "axes") if len(node.inputs) > 3 and node.inputs[3] is not None else list(
        range(len(starts)))
    steps = w.ints(node.inputs[4], "steps") if len(node.inputs) > 4 and node.inputs[4] is not None else [1] * len(
        starts)
    if rank is None:
        raise Unsupported("unknown rank")
    index = [":"] * rank
    big = 2**62
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st <= 0:
            raise Unsupported("negative step")
        lo = "" if s == 0 else str(s)
        hi = "" if e >= big else str(e)
        index[a % rank] = f"{lo}:{hi}" + (f":{st}" if st != 1 else "")
    while index and index[-1] == ":":
        index.pop()
    return f"{x}[{', '.join(index)}]" if index else x


@emitter("Pad")
def pad(w: TorchWriter, node):
    mode = attr(node, "mode", "constant")
    pads = w.ints(node.inputs[1], "pads")
    rank = w.g.rank(node.inputs[0])
    if rank is None:
        raise Unsupported("unknown rank")
    axes = w.ints(node.inputs[3], "axes") if len(node.inputs) > 3 and node.inputs[3] is not None else list(range(rank))
    k = len(axes)
    full_b, full_e = [0] * rank, [0] * rank
    for a, b, e in zip(axes, pads[:k], pads[k:]):
        full_b[a % rank], full_e[a % rank] = b, e
    while len(full_b) > 1 and full_b[0] == full_e[0] == 0:
        full_b, full_e = full_b[1:], full_e[1:]
    value = w.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    args = [w.x(node.inputs[0]), pad_arg(full_b, full_e)]
    if mode != "constant":
        if mode not in ("reflect", "edge"):
            raise Unsupported(f"mode {mode}")
        args.append(f'mode="{"replicate" if mode == "edge" else "reflect"}"')
    elif value is not None and float(value.reshape(-1)[0]) != 0.0:
        args.append(f"value={literal(value.reshape(-1)[0].item())}")
    w.uses_f = True
    return f"F.pad({', '.join(args)})"


@emitter("Resize", "Upsample")
def resize(w: TorchWriter, node):
    mode = attr(node, "mode", "nearest")
    ctm = attr(node, "coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
    x = w.x(node.inputs[0])
    rank = w.g.rank(node.inputs[0])
    if node.op_type == "Upsample":
        scales = w.const(node.inputs[1]) if len(node.inputs) > 1 else None
        sizes = None
    else:
        scales = w.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        sizes = w.ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if scales is not None and scales.size == 0:
            scales = None
    if rank != 4:
        raise Unsupported("non-4-D input")
    w.uses_f = True
    if scales is not None:
        s = [float(v) for v in scales.reshape(-1)]
        if s[:2] != [1.0, 1.0]:
            raise Unsupported("scaling batch or channels")
        how = f"scale_factor=({literal(s[2])}, {literal(s[3])})"
    elif sizes is not None:
        how = f"size=({sizes[-2]}, {sizes[-1]})"
    else:
        raise Unsupported("run-time scales/sizes")
    if mode == "nearest":
        if ctm != "asymmetric" or attr(node, "nearest_mode", "round_prefer_floor") != "floor" and node.op_type == "Resize":
            raise Unsupported(f"nearest with {ctm}/{attr(node, 'nearest_mode')}")
        return f'F.interpolate({x}, {how}, mode="nearest")'
    if mode in ("linear", "bilinear"):
        if ctm in ("half_pixel", "pytorch_half_pixel"):
            return f'F.interpolate({x}, {how}, mode="bilinear", align_corners=False)'
        if ctm == "align_corners":
            return f'F.interpolate({x}, {how}, mode="bilinear", align_corners=True)'
        raise Unsupported(f"linear with {ctm}")
    raise Unsupported(f"mode {mode}")


def _reduce(method: str):
    def emit(w: TorchWriter, node):
        x = w.x(node.inputs[0])
        keep = bool(int(attr(node, "keepdims", 1)))
        axes = w.ints(node.inputs[1], "axes") if len(node.inputs) > 1 and node.inputs[1] is not None else None
        if axes is None:
            axes = attr(node, "axes")
        if not axes:
            if int(attr(node, "noop_with_empty_axes", 0)):
                return x
            rank = w.g.rank(node.inputs[0])
            if rank is None:
                raise Unsupported("all axes of unknown rank")
            axes = list(range(rank))
        dims = str(axes[0]) if len(axes) == 1 else _tuple(list(axes))
        return f"{x}.{method}({dims}{', keepdim=True' if keep else ''})"

    return emit


for _op, _m in {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "amax", "ReduceMin": "amin"}.items():
    emitter(_op)(_reduce(_m))
