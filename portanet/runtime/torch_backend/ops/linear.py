"""Convolutions and matrix products: Conv, ConvTranspose, Gemm, MatMul, Einsum."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from portanet.runtime.torch_backend.ops._pads import pad_spatial, same_pads, symmetric
from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_auto_pad(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int], dilations: list[int],
    groups: int, auto_pad: str,
) -> torch.Tensor:
    """Conv with SAME_UPPER/SAME_LOWER padding computed from the run-time input size."""
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    pads = same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad)
    return _CONV[n](pad_spatial(x, pads), w, b, strides, 0, dilations, groups)


def conv_padded(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int], pads: list[int],
    dilations: list[int], groups: int,
) -> torch.Tensor:
    """Conv with asymmetric explicit pads (zero-pad first, then an unpadded conv)."""
    n = w.dim() - 2
    return _CONV[n](pad_spatial(x, pads), w, b, strides, 0, dilations, groups)


@register("Conv")
def conv(ctx, node, x, w, b=None):
    wshape = node.inputs[1].shape
    kernel = attr(node, "kernel_shape")
    n = len(kernel) if kernel else (len(wshape) - 2 if wshape is not None else None)
    if n is None:
        const_w = ctx.const(w)
        if const_w is None:
            raise ValueError("Conv needs kernel_shape or a weight of known rank")
        n = const_w.dim() - 2
    if n not in _CONV:
        raise ValueError(f"expected a 1-D, 2-D or 3-D convolution, received {n}-D")
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    groups = int(attr(node, "group", 1))
    auto_pad = attr(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return ctx.call(conv_auto_pad, x, w, b, strides, dilations, groups, auto_pad)
    pads = [0] * (2 * n) if auto_pad == "VALID" else list(attr(node, "pads", [0] * (2 * n)))
    if symmetric(pads):
        # (N, C_in, *S) -> (N, C_out, *S'): torch's own padded convolution (fastest path)
        return ctx.call(_CONV[n], x, w, b, strides, pads[:n], dilations, groups)
    return ctx.call(conv_padded, x, w, b, strides, pads, dilations, groups)


def conv_transpose(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, strides: list[int], dilations: list[int],
    groups: int, pads: list[int] | None, output_padding: list[int], output_shape: list[int] | None,
    auto_pad: str,
) -> torch.Tensor:
    """General ONNX ConvTranspose: full transposed conv, then crop/extend to the ONNX size."""
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    in_sizes = list(x.shape[2:])
    # (N, C_in, *S) -> (N, C_out, *full) with full = s*(in-1) + d*(k-1) + 1
    full = [s * (i - 1) + d * (k - 1) + 1 for s, i, d, k in zip(strides, in_sizes, dilations, kernel)]
    y = _CONV_T[n](x, w, None, strides, 0, 0, groups, dilations)
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is None:
            output_shape = [i * s for i, s in zip(in_sizes, strides)]
        begins, ends = [], []
        for f, o, op in zip(full, output_shape, output_padding):
            total = f + op - o
            # ONNX: SAME_UPPER puts the smaller half first, otherwise the larger half
            if auto_pad == "SAME_UPPER":
                begins.append(total // 2)
                ends.append(total - total // 2)
            else:
                begins.append(total - total // 2)
                ends.append(total // 2)
        pads = begins + ends
    pads = pads or [0] * (2 * n)
    crop = []
    for i in reversed(range(n)):
        # negative F.pad amounts crop; output_padding adds zero rows at the end
        crop += [-pads[i], -pads[i + n] + output_padding[i]]
    y = F.pad(y, crop)
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * n))
    return y


@register("ConvTranspose")
def conv_t(ctx, node, x, w, b=None):
    wshape = node.inputs[1].shape
    kernel = attr(node, "kernel_shape")
    n = len(kernel) if kernel else (len(wshape) - 2 if wshape is not None else ctx.const(w).dim() - 2)
    if n not in _CONV_T:
        raise ValueError(f"expected a 1-D, 2-D or 3-D transposed convolution, received {n}-D")
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    groups = int(attr(node, "group", 1))
    out_pad = list(attr(node, "output_padding", [0] * n))
    out_shape = attr(node, "output_shape")
    auto_pad = attr(node, "auto_pad", "NOTSET")
    pads = None if auto_pad != "NOTSET" else attr(node, "pads")
    pads = [0] * (2 * n) if auto_pad == "VALID" else pads
    simple = out_shape is None and auto_pad in ("NOTSET", "VALID")
    p = list(pads or [0] * (2 * n))
    if simple and symmetric(p) and all(o < max(s, d) for o, s, d in zip(out_pad, strides, dilations)):
        return ctx.call(_CONV_T[n], x, w, b, strides, p[:n], out_pad, groups, dilations)
    if out_shape is not None and len(out_shape) > n:
        out_shape = out_shape[-n:]
    return ctx.call(
        conv_transpose, x, w, b, strides, dilations, groups, p if pads is not None else None, out_pad,
        list(out_shape) if out_shape is not None else None, auto_pad,
    )


def gemm(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, alpha: float, beta: float, trans_a: int, trans_b: int
) -> torch.Tensor:
    a = a.t() if trans_a else a
    b = b.t() if trans_b else b
    y = a @ b
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


@register("Gemm")
def _gemm(ctx, node, a, b, c=None):
    alpha = float(attr(node, "alpha", 1.0))
    beta = float(attr(node, "beta", 1.0))
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    cshape = node.inputs[2].shape if c is not None else None
    c_vec = c is None or (cshape is not None and len(cshape) == 1)
    if alpha == 1.0 and beta == 1.0 and not ta and tb and c_vec:
        # (N, K) x (M, K)^T + (M,): exactly a Linear layer
        return ctx.call(F.linear, a, b, c)
    return ctx.call(gemm, a, b, c, alpha, beta, ta, tb)


@register("MatMul")
def matmul(ctx, node, a, b):
    return ctx.call(torch.matmul, a, b)


@register("Einsum")
def einsum(ctx, node, *xs):
    return ctx.call(torch.einsum, str(attr(node, "equation")).replace(" ", ""), *xs)
