"""Layers with weights or windows: Convolution, Deconvolution, Pooling, BatchNorm,
InstanceNorm, FullyConnected, LRN, L2Normalization, Embedding, UpSampling."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from portanet.converters.mxnet.context import NodeCtx
from portanet.converters.mxnet.handlers import HANDLERS
from portanet.errors import ConversionError
from portanet.ir.frozen import mark_frozen

_LAYOUTS = {1: ("NCW",), 2: ("NCHW",), 3: ("NCDHW",)}


def _window(n: NodeCtx) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """kernel, stride, dilate, pad with MXNet's defaults (ones, ones, zeros of the kernel's rank)."""
    a = n.attrs
    kernel = a.tuple("kernel")
    k = len(kernel)
    if k not in _LAYOUTS:
        raise ConversionError(f"expected a 1-, 2- or 3-D kernel, received kernel={kernel}")
    layout = a.str("layout")
    if layout is not None and layout not in _LAYOUTS[k]:
        raise ConversionError(f"expected layout {_LAYOUTS[k][0]} (channels first), received {layout}")
    stride = a.tuple("stride", (1,) * k)
    dilate = a.tuple("dilate", (1,) * k)
    pad = a.tuple("pad", (0,) * k)
    for key, val in (("stride", stride), ("dilate", dilate), ("pad", pad)):
        if len(val) != k:
            raise ConversionError(f"expected {key} of length {k} (like kernel={kernel}), received {val}")
    return kernel, stride, dilate, pad


def _check_weight(n: NodeCtx, index: int, expected: tuple[int | None, ...], what: str) -> None:
    arr = n.array(index)
    if arr is None:
        return
    ok = arr.ndim == len(expected) and all(e is None or e == s for e, s in zip(expected, arr.shape))
    if not ok:
        shown = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "") + ")"
        raise ConversionError(
            f"expected {what} of shape {shown}, received {tuple(arr.shape)} ('{n.input_name(index)}')"
        )


@HANDLERS.register("Convolution", "Convolution_v1")
def convolution(n: NodeCtx) -> ir.Value:
    a = n.attrs
    kernel, stride, dilate, pad = _window(n)
    group = a.int("num_group", 1)
    num_filter = a.int("num_filter")
    # weight: (num_filter, C_in / num_group, *kernel)
    _check_weight(n, 1, (num_filter, None, *kernel), "weights")
    inputs = [n.input(0), n.weight(1)]
    if not a.bool("no_bias", False):
        _check_weight(n, 2, (num_filter,), "bias")
        inputs.append(n.weight(2))
    return n.op("Conv", inputs, {
        "kernel_shape": list(kernel), "strides": list(stride), "dilations": list(dilate),
        "pads": list(pad) * 2, "group": group,
    })


@HANDLERS.register("Deconvolution")
def deconvolution(n: NodeCtx) -> ir.Value:
    a = n.attrs
    kernel, stride, dilate, pad = _window(n)
    k = len(kernel)
    group = a.int("num_group", 1)
    num_filter = a.int("num_filter")
    adj = a.tuple("adj", (0,) * k)
    target = a.tuple("target_shape", ())
    x = n.input(0)
    # weight: (C_in, num_filter / num_group, *kernel), the same layout as ONNX ConvTranspose
    _check_weight(n, 1, (None, num_filter // max(group, 1), *kernel), "weights")
    if target and any(t for t in target):
        # a target shape overrides pad/adj: total = (in-1)*s + d*(k-1) + 1 - target,
        # pad = ceil(total/2), adj = total % 2 (per spatial dim)
        spatial = n.static_dims(x, range(2, 2 + k), "Deconvolution target_shape")
        pads, adjs = [], []
        for i in range(k):
            total = (spatial[i] - 1) * stride[i] + dilate[i] * (kernel[i] - 1) + 1 - target[i]
            if total < 0:
                raise ConversionError(
                    f"target_shape {target} is larger than the largest output this deconvolution gives "
                    f"for input size {spatial}"
                )
            pads.append((total + 1) // 2)
            adjs.append(total % 2)
        pad, adj = tuple(pads), tuple(adjs)
    inputs = [x, n.weight(1)]
    # Deconvolution's no_bias defaults to True, unlike Convolution's
    if not a.bool("no_bias", True):
        inputs.append(n.weight(2))
    return n.op("ConvTranspose", inputs, {
        "kernel_shape": list(kernel), "strides": list(stride), "dilations": list(dilate),
        "pads": list(pad) * 2, "output_padding": list(adj), "group": group,
    })


@HANDLERS.register("Pooling")
def pooling(n: NodeCtx) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    ptype = a.str("pool_type", "max")
    convention = a.str("pooling_convention", "valid")
    if ptype not in ("max", "avg", "sum", "lp"):
        raise ConversionError(f"expected pool_type max, avg, sum or lp, received '{ptype}'")
    if convention not in ("valid", "full"):
        raise ConversionError(f"expected pooling_convention valid or full, received '{convention}'")
    p_value = a.int("p_value", 2)
    if a.bool("global_pool", False):
        # kernel/stride/pad are ignored; every spatial dim is reduced
        if ptype == "max":
            return n.op("GlobalMaxPool", [x])
        if ptype == "avg":
            return n.op("GlobalAveragePool", [x])
        if ptype == "lp":
            return n.op("GlobalLpPool", [x], {"p": p_value})
        return n.op("ReduceSum", [x, n.ints(range(2, n.rank(x)))], {"keepdims": 1})
    kernel, stride, _dilate, pad = _window(n)
    k = len(kernel)
    ceil = 1 if convention == "full" else 0
    common = {"kernel_shape": list(kernel), "strides": list(stride)}
    if ptype == "max":
        # padded cells are -inf in MXNet too; ceil-mode overhang windows are clipped
        return n.op("MaxPool", [x], {**common, "pads": list(pad) * 2, "ceil_mode": ceil})
    if ptype == "lp":
        return n.op("LpPool", [x], {**common, "pads": list(pad) * 2, "ceil_mode": ceil, "p": p_value})
    zero_pad = [0, 0, *pad, 0, 0, *pad]
    if ptype == "sum":
        # sum = zero-padded window sum: pad explicitly (also the ceil-mode overhang), then
        # average over full windows and scale by the window size
        if ceil:
            spatial = n.static_dims(x, range(2, 2 + k), "sum pooling with pooling_convention=full")
            extra = []
            for i in range(k):
                out = -(-(spatial[i] + 2 * pad[i] - kernel[i]) // stride[i]) + 1
                extra.append(max(0, (out - 1) * stride[i] + kernel[i] - (spatial[i] + 2 * pad[i])))
            zero_pad = [0, 0, *pad, 0, 0, *(p + e for p, e in zip(pad, extra))]
        xp = n.op("Pad", [x, n.ints(zero_pad)]) if any(zero_pad) else x
        avg = n.op("AveragePool", [xp], common)
        return n.op("Mul", [avg, n.scalar(float(np.prod(kernel)), x)])
    if a.bool("count_include_pad", True):
        # MXNet's divisor counts padded cells but not the ceil-mode overhang beyond the
        # padding: pad with zeros explicitly, then exclude only out-of-tensor cells
        xp = n.op("Pad", [x, n.ints(zero_pad)]) if any(pad) else x
        return n.op("AveragePool", [xp], {**common, "ceil_mode": ceil, "count_include_pad": 0})
    return n.op("AveragePool", [x], {**common, "pads": list(pad) * 2, "ceil_mode": ceil, "count_include_pad": 0})


def _channels(n: NodeCtx, *indices: int) -> int:
    for i in indices:
        arr = n.array(i)
        if arr is not None:
            return int(arr.size)
    raise ConversionError("cannot tell the number of channels: no stored gamma/beta")


def _to_axis1(n: NodeCtx, x: ir.Value, axis: int) -> tuple[ir.Value, list[int] | None]:
    """Transpose ``axis`` to position 1 (NCHW norm ops); returns the inverse permutation."""
    if axis == 1:
        return x, None
    rank = n.rank(x)
    axis = axis % rank
    if axis == 1:
        return x, None
    perm = [0, axis, *[i for i in range(1, rank) if i != axis]]
    inverse = [perm.index(i) for i in range(rank)]
    return n.op("Transpose", [x], {"perm": perm}), inverse


@HANDLERS.register("BatchNorm", "BatchNorm_v1")
def batchnorm(n: NodeCtx) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    eps = a.float("eps", 1e-3)
    if a.bool("fix_gamma", True):
        # fix_gamma: the stored gamma is ignored and treated as 1, at inference too
        gamma = mark_frozen(n.const(np.ones(_channels(n, 2, 1), dtype=np.float32)), "mxnet BatchNorm fix_gamma")
    else:
        gamma = n.weight(1)
    beta = n.weight(2)
    mean = n.weight(3, aux=True)
    var = n.weight(4, aux=True)
    xt, inverse = _to_axis1(n, x, a.int("axis", 1))
    y = n.op("BatchNormalization", [xt, gamma, beta, mean, var], {"epsilon": eps})
    if inverse is not None:
        y = n.op("Transpose", [y], {"perm": inverse})
    return y


@HANDLERS.register("InstanceNorm")
def instancenorm(n: NodeCtx) -> ir.Value:
    return n.op("InstanceNormalization", [n.input(0), n.weight(1), n.weight(2)],
                {"epsilon": n.attrs.float("eps", 1e-3)})


@HANDLERS.register("FullyConnected")
def fully_connected(n: NodeCtx) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    num_hidden = a.int("num_hidden")
    # weight: (num_hidden, K); y = x W^T + b
    _check_weight(n, 1, (num_hidden, None), "weights")
    w = n.weight(1)
    bias = None
    if not a.bool("no_bias", False):
        _check_weight(n, 2, (num_hidden,), "bias")
        bias = n.weight(2)
    if a.bool("flatten", True):
        # (N, d1, d2, ...) -> (N, d1*d2*...)
        flat = n.op("Flatten", [x], {"axis": 1})
        return n.op("Gemm", [flat, w] + ([bias] if bias is not None else []), {"transB": 1})
    # flatten=False: applied to the last axis, leading dims kept
    y = n.op("MatMul", [x, n.op("Transpose", [w], {"perm": [1, 0]})])
    return n.op("Add", [y, bias]) if bias is not None else y


@HANDLERS.register("LRN")
def lrn(n: NodeCtx) -> ir.Value:
    a = n.attrs
    # y = x / (knorm + alpha/nsize * sum_window x^2)^beta == ONNX LRN with bias=knorm
    return n.op("LRN", [n.input(0)], {
        "size": a.int("nsize"), "alpha": a.float("alpha", 1e-4), "beta": a.float("beta", 0.75),
        "bias": a.float("knorm", 2.0),
    })


@HANDLERS.register("L2Normalization")
def l2_normalization(n: NodeCtx) -> ir.Value:
    a = n.attrs
    x = n.input(0)
    mode = a.str("mode", "instance")
    rank = n.rank(x)
    axes = {"instance": list(range(1, rank)), "channel": [1], "spatial": list(range(2, rank))}.get(mode)
    if axes is None:
        raise ConversionError(f"expected mode instance, channel or spatial, received '{mode}'")
    # y = x / sqrt(sum(x^2) + eps)
    ss = n.op("ReduceSumSquare", [x, n.ints(axes)], {"keepdims": 1})
    norm = n.op("Sqrt", [n.op("Add", [ss, n.scalar(a.float("eps", 1e-10), x)])])
    return n.op("Div", [x, norm])


@HANDLERS.register("Embedding")
def embedding(n: NodeCtx) -> ir.Value:
    a = n.attrs
    input_dim = a.int("input_dim")
    _check_weight(n, 1, (input_dim, a.int("output_dim", None)), "embedding weights")
    # indices arrive as floats: truncate to int, clip to [0, input_dim-1] (Gather would not)
    idx = n.op("Cast", [n.input(0)], {"to": ir.DataType.INT64})
    idx = n.op("Clip", [idx, n.const(np.asarray(0, np.int64)), n.const(np.asarray(input_dim - 1, np.int64))])
    return n.op("Gather", [n.weight(1), idx], {"axis": 0})


@HANDLERS.register("UpSampling")
def upsampling(n: NodeCtx) -> ir.Value:
    a = n.attrs
    scale = a.int("scale")
    sample_type = a.str("sample_type", "nearest")
    if sample_type == "bilinear":
        # a grouped deconvolution with the stored (usually bilinear-initialised) weight
        x = n.input(0)
        w = n.array(1)
        num_filter = a.int("num_filter", None) or (int(w.shape[0]) if w is not None else None)
        if not num_filter:
            raise ConversionError("bilinear UpSampling needs num_filter or a stored weight")
        k = 2 * scale - scale % 2
        p = math.ceil((scale - 1) / 2)
        _check_weight(n, 1, (num_filter, 1, k, k), "bilinear weights")
        return n.op("ConvTranspose", [x, n.weight(1)], {
            "kernel_shape": [k, k], "strides": [scale, scale], "pads": [p, p, p, p], "group": num_filter,
        })
    if sample_type != "nearest":
        raise ConversionError(f"expected sample_type nearest or bilinear, received '{sample_type}'")
    num_args = a.int("num_args", 1)
    inputs = [n.input(i) for i in range(min(num_args, n.n_inputs))]
    resize = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    if len(inputs) == 1:
        # nearest with an integer scale == repeat on H and W
        scales = n.const(np.asarray([1, 1, scale, scale], np.float32))
        return n.op("Resize", [inputs[0], None, scales], resize)
    # several inputs: each resized to the first input's size x scale, then concat or summed
    first = inputs[0]
    target = n.op("Mul", [n.op("Concat", [n.dim(first, 2), n.dim(first, 3)], {"axis": 0}), n.ints([scale])])
    outs = []
    for x in inputs:
        sizes = n.op("Concat", [n.dim(x, 0), n.dim(x, 1), target], {"axis": 0})
        outs.append(n.op("Resize", [x, None, None, sizes], resize))
    if a.str("multi_input_mode", "concat") == "sum":
        return n.op("Sum", outs)
    return n.op("Concat", outs, {"axis": 1})
