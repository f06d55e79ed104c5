"""Tensor-shape ops: Reshape, Flatten, Transpose, Squeeze/Unsqueeze, Concat, Split, Slice,
Gather, Expand, Tile, Pad, Shape, Size, Constant, ConstantOfShape, Range, Depth/SpaceToDepth.

Shape arguments arrive as constants (folded to Python lists) or, when they were computed
from run-time shapes, as small int64 tensors (on the data's device) turned into lists at
run time.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register


def _list(v: Any) -> list[int]:
    if isinstance(v, torch.Tensor):
        return [int(i) for i in v.reshape(-1).tolist()]
    return [int(i) for i in v]


def _maybe_list(ctx, ref) -> Any:
    """A constant int tensor -> a Python list (cheapest argument); a run-time value stays."""
    c = ctx.const(ref)
    return [int(i) for i in c.reshape(-1).tolist()] if c is not None else ref


# -- Reshape / Flatten / Transpose / Squeeze / Unsqueeze ------------------------------------
def reshape(x: torch.Tensor, shape: Any, allowzero: int) -> torch.Tensor:
    dims = _list(shape)
    if not allowzero:
        # 0 copies the input's dimension at that position
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register("Reshape")
def _reshape(ctx, node, x, shape=None):
    allowzero = int(attr(node, "allowzero", 0))
    if shape is None:  # opset < 5: shape attribute
        shape = torch.tensor(attr(node, "shape"), dtype=torch.int64)
    dims = _maybe_list(ctx, shape)
    if isinstance(dims, list) and (allowzero or 0 not in dims):
        return ctx.call(torch.reshape, x, dims)
    return ctx.call(reshape, x, dims, allowzero)


def flatten(x: torch.Tensor, axis: int) -> torch.Tensor:
    # (d0, ..., d_{a-1}, d_a, ...) -> (d0*...*d_{a-1}, d_a*...)
    a = axis % x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))


@register("Flatten")
def _flatten(ctx, node, x):
    return ctx.call(flatten, x, int(attr(node, "axis", 1)))


def transpose_default(x: torch.Tensor) -> torch.Tensor:
    return x.permute(*reversed(range(x.dim())))


@register("Transpose")
def _transpose(ctx, node, x):
    perm = attr(node, "perm")
    if perm is None:
        return ctx.call(transpose_default, x)
    return ctx.call(torch.permute, x, list(perm))


def squeeze(x: torch.Tensor, axes: Any) -> torch.Tensor:
    if axes is None:
        return x.squeeze()
    axes = _list(axes)
    return x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x.squeeze()


@register("Squeeze")
def _squeeze(ctx, node, x, axes=None):
    if ctx.opset < 13:
        axes = attr(node, "axes")
    else:
        axes = _maybe_list(ctx, axes) if axes is not None else None
    return ctx.call(squeeze, x, axes)


def unsqueeze(x: torch.Tensor, axes: Any) -> torch.Tensor:
    axes = _list(axes)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@register("Unsqueeze")
def _unsqueeze(ctx, node, x, axes=None):
    axes = attr(node, "axes") if ctx.opset < 13 else _maybe_list(ctx, axes)
    return ctx.call(unsqueeze, x, axes)


# -- Concat / Split / Slice / Gather ---------------------------------------------------------
@register("Concat")
def _concat(ctx, node, *xs):
    axis = int(attr(node, "axis"))
    return ctx.call(torch.cat, list(xs), axis)


def split(x: torch.Tensor, axis: int, sizes: Any, n: int) -> tuple[torch.Tensor, ...]:
    if sizes is not None:
        return torch.split(x, _list(sizes), dim=axis)
    # equal parts; the last one smaller when the axis does not divide (opset 18 num_outputs)
    return torch.split(x, math.ceil(x.shape[axis] / n), dim=axis)


@register("Split")
def _split(ctx, node, x, sizes=None):
    axis = int(attr(node, "axis", 0))
    n = len(node.outputs)
    if sizes is None and attr(node, "split") is not None:
        sizes = list(attr(node, "split"))
    elif sizes is not None:
        sizes = _maybe_list(ctx, sizes)
    return ctx.unpack(ctx.call(split, x, axis, sizes, n), n)


def slice_(x: torch.Tensor, starts: Any, ends: Any, axes: Any, steps: Any) -> torch.Tensor:
    starts, ends = _list(starts), _list(ends)
    axes = _list(axes) if axes is not None else list(range(len(starts)))
    steps = _list(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        dim = x.shape[axis]
        if step > 0:
            start = min(max(start + dim if start < 0 else start, 0), dim)
            end = min(max(end + dim if end < 0 else end, 0), dim)
            x = x.narrow(axis, start, max(end - start, 0)) if step == 1 else _strided(x, axis, start, end, step)
        else:
            # clamp as ONNX: start to [0, dim-1], end to [-1, dim-1]; torch has no negative steps
            start = min(max(start + dim if start < 0 else start, -1), dim - 1)
            end = min(max(end + dim if end < 0 else end, -1), dim - 1)
            idx = torch.arange(start, end, step, device=x.device)
            x = x.index_select(axis, idx)
    return x


def _strided(x: torch.Tensor, axis: int, start: int, end: int, step: int) -> torch.Tensor:
    index = [slice(None)] * x.dim()
    index[axis] = slice(start, end, step)
    return x[tuple(index)]


@register("Slice")
def _slice(ctx, node, x, starts=None, ends=None, axes=None, steps=None):
    if ctx.opset < 10:
        starts, ends, axes = attr(node, "starts"), attr(node, "ends"), attr(node, "axes")
        return ctx.call(slice_, x, starts, ends, axes, None)
    return ctx.call(
        slice_, x, _maybe_list(ctx, starts), _maybe_list(ctx, ends),
        _maybe_list(ctx, axes) if axes is not None else None,
        _maybe_list(ctx, steps) if steps is not None else None,
    )


def gather(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    axis %= x.dim()
    idx = indices.to(device=x.device, dtype=torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)  # negative indices count from the end
    # out shape: x.shape[:axis] + indices.shape + x.shape[axis+1:]
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]))


@register("Gather")
def _gather(ctx, node, x, indices):
    return ctx.call(gather, x, indices, int(attr(node, "axis", 0)))


def gather_elements(x: torch.Tensor, indices: torch.Tensor, axis: int) -> torch.Tensor:
    axis %= x.dim()
    idx = indices.to(device=x.device, dtype=torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.gather(x, axis, idx)


@register("GatherElements")
def _gather_elements(ctx, node, x, indices):
    return ctx.call(gather_elements, x, indices, int(attr(node, "axis", 0)))


# -- Expand / Tile / Pad ---------------------------------------------------------------------
def expand(x: torch.Tensor, shape: Any) -> torch.Tensor:
    # ONNX Expand broadcasts both ways: a 1 in `shape` keeps x's dimension
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_list(shape))))


@register("Expand")
def _expand(ctx, node, x, shape):
    return ctx.call(expand, x, _maybe_list(ctx, shape))


def tile(x: torch.Tensor, repeats: Any) -> torch.Tensor:
    return x.repeat(*_list(repeats))


@register("Tile")
def _tile(ctx, node, x, repeats):
    return ctx.call(tile, x, _maybe_list(ctx, repeats))


def _pad_index(size: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index of every output position along one axis for reflect/edge/wrap padding."""
    pos = torch.arange(-before, size + after, device=device)
    if mode == "edge":
        return pos.clamp(0, size - 1)
    if mode == "wrap":
        return pos.remainder(size)
    # reflect: mirror without repeating the edge, period 2*(size-1)
    period = max(2 * (size - 1), 1)
    p = pos.remainder(period)
    return torch.where(p >= size, period - p, p)


def pad(x: torch.Tensor, pads: Any, value: Any, axes: Any, mode: str) -> torch.Tensor:
    pads = _list(pads)
    r = x.dim()
    axes = [a % r for a in _list(axes)] if axes is not None else list(range(r))
    k = len(axes)
    begins, ends = pads[:k], pads[k:]
    if mode == "constant":
        torch_pads: list[int] = []
        full_b, full_e = [0] * r, [0] * r
        for a, b, e in zip(axes, begins, ends):
            full_b[a], full_e[a] = b, e
        for a in reversed(range(r)):
            torch_pads += [full_b[a], full_e[a]]
        v = 0.0 if value is None else (value.item() if isinstance(value, torch.Tensor) else value)
        return F.pad(x, torch_pads, value=v)
    for a, b, e in zip(axes, begins, ends):
        # negative pads crop first
        if b < 0 or e < 0:
            x = x.narrow(a, max(-b, 0), x.shape[a] - max(-b, 0) - max(-e, 0))
            b, e = max(b, 0), max(e, 0)
        if b or e:
            x = x.index_select(a, _pad_index(x.shape[a], b, e, mode, x.device))
    return x


@register("Pad", static_inputs=(2,))
def _pad(ctx, node, x, pads=None, value=None, axes=None):
    mode = attr(node, "mode", "constant")
    if ctx.opset < 11:
        pads, value = list(attr(node, "pads")), float(attr(node, "value", 0.0))
    else:
        pads = _maybe_list(ctx, pads)
        value = ctx.const(value).item() if ctx.const(value) is not None else value
        axes = _maybe_list(ctx, axes) if axes is not None else None
    return ctx.call(pad, x, pads, value, axes, mode)


# -- Shape / Size / Constant / ConstantOfShape / Range ---------------------------------------
def shape(x: torch.Tensor, start: int, end: int | None) -> torch.Tensor:
    # on x's device, so that shape arithmetic can meet the (device) constants of the graph
    return torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


@register("Shape")
def _shape(ctx, node, x):
    return ctx.call(shape, x, int(attr(node, "start", 0)), attr(node, "end"))


def size(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Size")
def _size(ctx, node, x):
    return ctx.call(size, x)


@register("Constant")
def constant(ctx, node):
    for key, dtype in (
        ("value_float", torch.float32),
        ("value_floats", torch.float32),
        ("value_int", torch.int64),
        ("value_ints", torch.int64),
    ):
        v = attr(node, key)
        if v is not None:
            return torch.tensor(v, dtype=dtype)
    v = attr(node, "value")
    if v is None:
        raise ValueError("Constant without a supported value attribute (value, value_float(s), value_int(s))")
    return v


def constant_of_shape(shape: Any, value: torch.Tensor) -> torch.Tensor:
    # `value` is a graph constant: its device is the module's
    return torch.full(tuple(_list(shape)), value.reshape(-1)[0].item(), dtype=value.dtype, device=value.device)


@register("ConstantOfShape")
def _constant_of_shape(ctx, node, shape):
    value = attr(node, "value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return ctx.call(constant_of_shape, _maybe_list(ctx, shape), value)


def range_(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@register("Range")
def _range(ctx, node, start, limit, delta):
    return ctx.call(range_, start, limit, delta)


# -- DepthToSpace / SpaceToDepth -------------------------------------------------------------
def depth_to_space(x: torch.Tensor, block: int, mode: str) -> torch.Tensor:
    n, c, h, w = x.shape
    if mode == "DCR":
        y = x.reshape(n, block, block, c // (block * block), h, w).permute(0, 3, 4, 1, 5, 2)
    else:  # CRD
        y = x.reshape(n, c // (block * block), block, block, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (block * block), h * block, w * block)


@register("DepthToSpace")
def _d2s(ctx, node, x):
    return ctx.call(depth_to_space, x, int(attr(node, "blocksize")), attr(node, "mode", "DCR"))


def space_to_depth(x: torch.Tensor, block: int, mode: str) -> torch.Tensor:
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // block, block, w // block, block)
    # DCR: out channel = (by * b + bx) * C + c; CRD: c * b * b + by * b + bx
    y = y.permute(0, 3, 5, 1, 2, 4) if mode == "DCR" else y.permute(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * block * block, h // block, w // block)


@register("SpaceToDepth")
def _s2d(ctx, node, x):
    return ctx.call(space_to_depth, x, int(attr(node, "blocksize")), attr(node, "mode", "DCR"))


# -- TopK / CumSum / Trilu ---------------------------------------------------------------------
def topk(x: torch.Tensor, k: Any, axis: int, largest: int) -> tuple[torch.Tensor, torch.Tensor]:
    # the result is always sorted (allowed for sorted=0, where the order is unspecified)
    kk = _list(k)[0]
    # a stable sort keeps ONNX's tie rule (the lower index first); torch.topk does not promise it
    values, indices = torch.sort(x, dim=axis, descending=bool(largest), stable=True)
    return values.narrow(axis, 0, kk), indices.narrow(axis, 0, kk)


@register("TopK")
def _topk(ctx, node, x, k):
    out = ctx.call(
        topk, x, _maybe_list(ctx, k), int(attr(node, "axis", -1)), int(attr(node, "largest", 1))
    )
    return ctx.unpack(out, 2)


def cumsum(x: torch.Tensor, axis: Any, exclusive: int, reverse: int) -> torch.Tensor:
    a = _list(axis)[0] % x.dim()
    if reverse:
        x = torch.flip(x, dims=[a])
    y = torch.cumsum(x, dim=a)
    if exclusive:
        y = y - x
    return torch.flip(y, dims=[a]) if reverse else y


@register("CumSum")
def _cumsum(ctx, node, x, axis):
    return ctx.call(cumsum, x, _maybe_list(ctx, axis), int(attr(node, "exclusive", 0)), int(attr(node, "reverse", 0)))


def trilu(x: torch.Tensor, k: Any, upper: int) -> torch.Tensor:
    kk = _list(k)[0] if k is not None else 0
    return torch.triu(x, kk) if upper else torch.tril(x, kk)


@register("Trilu")
def _trilu(ctx, node, x, k=None):
    return ctx.call(trilu, x, _maybe_list(ctx, k) if k is not None else None, int(attr(node, "upper", 1)))
