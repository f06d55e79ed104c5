"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LpPool."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from portanet.runtime.torch_backend.ops._pads import pad_spatial, same_pads, symmetric
from portanet.runtime.torch_backend.ops._util import attr, output_used
from portanet.runtime.torch_backend.registry import register

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _resolve_pads(x, kernel, strides, dilations, pads, auto_pad):
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad)
    return pads


def _ceil_extra(x, kernel, strides, dilations, pads) -> list[int]:
    """Extra end padding giving ONNX's ceil-mode output size
    ``ceil((in + pads - ((k-1)*d + 1)) / s) + 1``, where a last window starting beyond the
    input and its begin padding is dropped (as torch and ONNX's reference do)."""
    n = len(kernel)
    extra = []
    for i in range(n):
        size = x.shape[2 + i] + pads[i] + pads[i + n]
        eff = (kernel[i] - 1) * dilations[i] + 1
        out = math.ceil((size - eff) / strides[i]) + 1
        if (out - 1) * strides[i] >= x.shape[2 + i] + pads[i]:
            out -= 1
        extra.append(max((out - 1) * strides[i] + eff - size, 0))
    return extra


def max_pool(
    x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
    ceil_mode: bool, auto_pad: str,
) -> torch.Tensor:
    n = len(kernel)
    pads = _resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    if symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel)):
        return _MAX[n](x, kernel, strides, pads[:n], dilations, ceil_mode)
    if ceil_mode:
        pads = pads[:n] + [e + c for e, c in zip(pads[n:], _ceil_extra(x, kernel, strides, dilations, pads))]
    return _MAX[n](pad_spatial(x, pads, float("-inf")), kernel, strides, 0, dilations, False)


def max_pool_with_indices(
    x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
    ceil_mode: bool, storage_order: int,
):
    """MaxPool and its Indices output: ONNX flattens indices over the whole (N, C, *S)
    tensor (row-major, or column-major over H, W with ``storage_order=1``); torch's are per
    (n, c) plane."""
    n = len(kernel)
    y, idx = _MAX[n](x, kernel, strides, pads[:n], dilations, ceil_mode, return_indices=True)
    spatial = x.shape[2:]
    plane = math.prod(spatial)
    if storage_order and n == 2:
        h, w = idx // spatial[1], idx % spatial[1]
        idx = h + w * spatial[0]
    nc = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *[1] * n)
    return y, idx + nc * plane


def _pool_attrs(node, n):
    kernel = list(attr(node, "kernel_shape"))
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    pads = [0] * (2 * n) if auto_pad == "VALID" else list(attr(node, "pads", [0] * (2 * n)))
    return kernel, strides, dilations, auto_pad, pads, bool(attr(node, "ceil_mode", 0))


@register("MaxPool")
def _max_pool(ctx, node, x):
    n = len(attr(node, "kernel_shape"))
    kernel, strides, dilations, auto_pad, pads, ceil_mode = _pool_attrs(node, n)
    if output_used(node, 1):
        if auto_pad not in ("NOTSET", "VALID") or not symmetric(pads):
            raise ValueError("MaxPool Indices output is supported with symmetric explicit pads only")
        out = ctx.call(
            max_pool_with_indices, x, kernel, strides, pads, dilations, ceil_mode, int(attr(node, "storage_order", 0))
        )
        return ctx.unpack(out, 2)
    if auto_pad == "NOTSET" and symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel)):
        return ctx.call(_MAX[n], x, kernel, strides, pads[:n], dilations, ceil_mode)
    return ctx.call(max_pool, x, kernel, strides, pads, dilations, ceil_mode, auto_pad)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _window_sum(t: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> torch.Tensor:
    """Sum over every (dilated) pooling window: a ones-kernel convolution per channel."""
    n, c = t.shape[0], t.shape[1]
    ones = torch.ones((1, 1, *kernel), dtype=t.dtype, device=t.device)
    flat = t.reshape(n * c, 1, *t.shape[2:])  # (N*C, 1, *S)
    out = _CONV[len(kernel)](flat, ones, None, strides, 0, dilations)
    return out.reshape(n, c, *out.shape[2:])


def avg_pool(
    x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
    ceil_mode: bool, count_include_pad: bool, auto_pad: str,
) -> torch.Tensor:
    """General ONNX AveragePool: window sums divided by the number of counted positions
    (the input, plus the explicit pads when ``count_include_pad``; never the ceil overhang)."""
    n = len(kernel)
    pads = _resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    if all(d == 1 for d in dilations) and symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel)):
        if not ceil_mode or not count_include_pad:
            return _AVG[n](x, kernel, strides, pads[:n], ceil_mode, count_include_pad)
    extra = _ceil_extra(x, kernel, strides, dilations, pads) if ceil_mode else [0] * n
    full = pads[:n] + [e + c for e, c in zip(pads[n:], extra)]
    sums = _window_sum(pad_spatial(x, full), kernel, strides, dilations)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    region = pad_spatial(ones, pads, 1.0 if count_include_pad else 0.0)
    count = _window_sum(pad_spatial(region, [0] * n + extra), kernel, strides, dilations)
    return sums / count


@register("AveragePool")
def _avg_pool(ctx, node, x):
    n = len(attr(node, "kernel_shape"))
    kernel, strides, dilations, auto_pad, pads, ceil_mode = _pool_attrs(node, n)
    cip = bool(attr(node, "count_include_pad", 0))
    if (
        auto_pad == "NOTSET" and not ceil_mode and all(d == 1 for d in dilations)
        and symmetric(pads) and all(2 * p <= k for p, k in zip(pads[:n], kernel))
    ):
        return ctx.call(_AVG[n], x, kernel, strides, pads[:n], False, cip)
    return ctx.call(avg_pool, x, kernel, strides, pads, dilations, ceil_mode, cip, auto_pad)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # (N, C, *S) -> (N, C, 1, ..., 1)
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalAveragePool")
def _gap(ctx, node, x):
    return ctx.call(global_avg_pool, x)


@register("GlobalMaxPool")
def _gmp(ctx, node, x):
    return ctx.call(global_max_pool, x)


def lp_pool(
    x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int], dilations: list[int],
    ceil_mode: bool, p: int, auto_pad: str,
) -> torch.Tensor:
    """ONNX LpPool: (sum over the window of |x|^p)^(1/p), pads contribute zeros."""
    n = len(kernel)
    pads = _resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    extra = _ceil_extra(x, kernel, strides, dilations, pads) if ceil_mode else [0] * n
    full = pads[:n] + [e + c for e, c in zip(pads[n:], extra)]
    return _window_sum(pad_spatial(x.abs().pow(p), full), kernel, strides, dilations).pow(1.0 / p)


@register("LpPool")
def _lp_pool(ctx, node, x):
    n = len(attr(node, "kernel_shape"))
    kernel, strides, dilations, auto_pad, pads, ceil_mode = _pool_attrs(node, n)
    return ctx.call(lp_pool, x, kernel, strides, pads, dilations, ceil_mode, int(attr(node, "p", 2)), auto_pad)


def global_lp_pool(x: torch.Tensor, p: int) -> torch.Tensor:
    return x.abs().pow(p).sum(dim=tuple(range(2, x.dim())), keepdim=True).pow(1.0 / p)


@register("GlobalLpPool")
def _global_lp_pool(ctx, node, x):
    return ctx.call(global_lp_pool, x, int(attr(node, "p", 2)))
