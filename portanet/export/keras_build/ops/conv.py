"""Convolutions and dense layers: Conv (Conv2D / DepthwiseConv2D), ConvTranspose
(Conv2DTranspose), Gemm and MatMul with constant weights (Dense)."""

from __future__ import annotations

import numpy as np

from portanet.export.graph import attr, pool_geometry
from portanet.export.keras_build.builder import NHWC, FlatView, KerasBuilder, Out, Unsupported, handler


def spatial_pad(b: KerasBuilder, x, begins: list[int], ends: list[int]):
    """Explicit zero padding of an NHWC tensor (ZeroPadding2D)."""
    if not any(begins) and not any(ends):
        return x
    layer = b.layers.ZeroPadding2D(((begins[0], ends[0]), (begins[1], ends[1])), name=b.name("pad"))
    return layer(x)


def _same_ok(begins: list[int], ends: list[int], in_dims: list, kernel, strides, dil) -> bool:
    """Whether Keras' padding="same" (TF: extra padding at the end) gives exactly these pads."""
    if not all(isinstance(d, int) for d in in_dims):
        return False
    for n, k, s, d, bb, ee in zip(in_dims, kernel, strides, dil, begins, ends):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        if (bb, ee) != (total // 2, total - total // 2):
            return False
    return True


@handler("Conv")
def conv(b: KerasBuilder, node):
    w = b.const(node.inputs[1])
    if w is None or w.ndim != 4:
        raise Unsupported("run-time weights or not 2-D")
    bias = b.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    groups = int(attr(node, "group", 1))
    in_dims = (b.g.shape(node.inputs[0]) or [None] * 4)[2:]
    try:
        kernel, strides, dil, begins, ends = pool_geometry(node, in_dims, list(w.shape[2:]))
    except ValueError as exc:
        raise Unsupported(str(exc)) from exc
    if any(s > 1 for s in strides) and any(d > 1 for d in dil):
        raise Unsupported("strides and dilation together")
    x = b.get(node.inputs[0], NHWC)
    padding = "valid"
    if any(begins) or any(ends):
        if all(s == 1 for s in strides) and _same_ok(begins, ends, in_dims, kernel, strides, dil):
            padding = "same"
        else:
            x = spatial_pad(b, x, begins, ends)
    cout, cin_g = w.shape[0], w.shape[1]
    cin = cin_g * groups
    common = dict(strides=tuple(strides), padding=padding, dilation_rate=tuple(dil), use_bias=bias is not None,
                  name=b.name())
    if groups == cin and groups > 1 and cout % cin == 0:
        mult = cout // cin
        # (Cin*mult, 1, kh, kw) -> (kh, kw, Cin, mult)
        kern = w.reshape(cin, mult, *w.shape[2:]).transpose(2, 3, 0, 1)
        layer = b.layers.DepthwiseConv2D(tuple(kernel), depth_multiplier=mult, **common)
    else:
        kern = w.transpose(2, 3, 1, 0)  # (O, I/g, kh, kw) -> (kh, kw, I/g, O)
        layer = b.layers.Conv2D(cout, tuple(kernel), groups=groups, **common)
    weights = [kern] + ([bias] if bias is not None else [])
    return b.apply(layer, x, weights, NHWC)


@handler("ConvTranspose")
def conv_transpose(b: KerasBuilder, node):
    w = b.const(node.inputs[1])
    if w is None or w.ndim != 4:
        raise Unsupported("run-time weights or not 2-D")
    if int(attr(node, "group", 1)) != 1:
        raise Unsupported("groups")
    if attr(node, "output_shape") is not None or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported("output_shape / auto_pad")
    bias = b.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    strides = list(attr(node, "strides", [1, 1]))
    dil = list(attr(node, "dilations", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    outpad = list(attr(node, "output_padding", [0, 0]))
    x = b.get(node.inputs[0], NHWC)
    layer = b.layers.Conv2DTranspose(
        w.shape[1], tuple(w.shape[2:]), strides=tuple(strides), padding="valid",
        output_padding=tuple(outpad) if any(outpad) else None, dilation_rate=tuple(dil),
        use_bias=bias is not None, name=b.name(),
    )
    kern = w.transpose(2, 3, 1, 0)  # (I, O, kh, kw) -> (kh, kw, O, I)
    out = b.apply(layer, x, [kern] + ([bias] if bias is not None else []), NHWC)
    if any(pads):
        crop = b.layers.Cropping2D(((pads[0], pads[2]), (pads[1], pads[3])), name=b.name("crop"))
        return b.apply(crop, out.tensor, None, NHWC)
    return out


def _dense(b: KerasBuilder, node, x_value, kernel: np.ndarray, bias: np.ndarray | None):
    """Dense over the last axis; a FlatView input permutes the kernel rows instead of the data."""
    e = b.entry(x_value)
    if isinstance(e, FlatView):
        kernel = kernel[e.order]
        x = e.tensor
    else:
        rank = b.g.rank(x_value)
        x = b.get(x_value, None)
        if rank is None:
            raise Unsupported("unknown rank")
    layer = b.layers.Dense(kernel.shape[1], use_bias=bias is not None, name=b.name())
    return b.apply(layer, x, [kernel] + ([bias] if bias is not None else []), None)


@handler("Gemm")
def gemm(b: KerasBuilder, node):
    a, wv = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name else None
    w = b.const(wv)
    if w is None or w.ndim != 2 or int(attr(node, "transA", 0)):
        raise Unsupported("run-time weights or transA")
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    kernel = (w.T if int(attr(node, "transB", 0)) else w) * np.float32(alpha)  # Dense: (in, out)
    bias = None
    if c is not None:
        cv = b.const(c)
        if cv is None or cv.size not in (1, kernel.shape[1]):
            raise Unsupported("run-time or 2-D bias")
        bias = np.broadcast_to(cv.reshape(-1), (kernel.shape[1],)).astype(np.float32) * np.float32(beta)
    return _dense(b, node, a, kernel, bias)


@handler("MatMul")
def matmul(b: KerasBuilder, node):
    a, wv = node.inputs
    w = b.const(wv)
    if w is not None and w.ndim == 2:
        return _dense(b, node, a, w, None)
    xa, xb = b.get(a, None), b.get(wv, None)
    return Out(b.ops.matmul(xa, xb), None)
