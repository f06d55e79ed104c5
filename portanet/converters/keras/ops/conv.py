"""Convolutions: Conv1D/2D/3D, DepthwiseConv1D/2D, SeparableConv1D/2D, Conv1D/2D/3DTranspose.

Keras kernels are (*k, in/groups, out); ONNX wants (out, in/groups, *k). TensorFlow's
``same`` padding is asymmetric (the extra pixel goes at the end) and is lowered to explicit
pads when the spatial size is static, else to ``auto_pad=SAME_UPPER`` (the same rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, static_shape, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.converters.keras.ops.activations import apply_to_output
from portanet.errors import ConversionError


def _tuple(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    if len(v) == 1 and n > 1:
        return v * n
    return [int(i) for i in v]


def spatial_dims(tensor: Any, data_format: str | None) -> list[int | None]:
    """Static spatial sizes of a Keras image tensor in ``data_format``."""
    shape = static_shape(tensor)
    return list(shape[2:]) if data_format == "channels_first" else list(shape[1:-1])


def same_pads(sizes: Sequence[int | None], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> list[int] | None:
    """TensorFlow SAME padding as ONNX pads (all begins, then all ends); None if a size is unknown."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        if size is None:
            return None
        out = -(-size // s)  # ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins + ends


def padding_attrs(padding: str, sizes: Sequence[int | None], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> dict[str, Any]:
    """ONNX ``pads``/``auto_pad`` for a Keras padding mode (``causal`` is handled by the caller)."""
    if padding == "valid":
        return {"pads": [0] * (2 * len(kernel))}
    if padding == "same":
        pads = same_pads(sizes, kernel, strides, dilations)
        return {"auto_pad": "SAME_UPPER"} if pads is None else {"pads": pads}
    raise ConversionError(f"expected padding 'valid' or 'same', received '{padding}'")


def _conv_input(ctx: KerasContext, layer: Any, tensor: Any, n_spatial: int) -> tuple[ir.Value, layout.Perm]:
    """The input held channels-first (N, C, *spatial), and that layout."""
    perm = layout.for_data_format(layer.data_format, n_spatial + 2)
    return ctx.get(tensor, perm), perm


def _kernel_to_onnx(kernel: np.ndarray) -> np.ndarray:
    """(*k, in/groups, out) -> (out, in/groups, *k)."""
    n = kernel.ndim
    return np.transpose(kernel, (n - 1, n - 2, *range(n - 2)))  # made contiguous by the builder


def _conv(ctx: KerasContext, layer: Any, x: ir.Value, w: ir.Value, b: ir.Value | None, tensor: Any,
          kernel_size: Sequence[int], strides: Sequence[int], dilations: Sequence[int], group: int,
          padding: str) -> ir.Value:
    sizes = spatial_dims(tensor, layer.data_format)
    if padding == "causal":
        # causal: pad only at the start, (k - 1) * d steps (Conv1D)
        attrs: dict[str, Any] = {"pads": [(kernel_size[0] - 1) * dilations[0], 0]}
    else:
        attrs = padding_attrs(padding, sizes, kernel_size, strides, dilations)
    attrs.update(kernel_shape=list(kernel_size), strides=list(strides), dilations=list(dilations), group=group)
    return ctx.op("Conv", [x, w] + ([b] if b is not None else []), attrs)


def _finish(ctx: KerasContext, layer: Any, y: ir.Value, perm: layout.Perm, outputs: list) -> None:
    y = apply_to_output(ctx, getattr(layer, "activation", None), y, perm)
    ctx.set(outputs[0], y, perm)


@HANDLERS.register("Conv1D", "Conv2D", "Conv3D")
def conv(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    n = layer.rank
    x, perm = _conv_input(ctx, layer, inputs[0], n)
    kernel = to_numpy(layer.kernel, np.float32)
    if kernel.ndim != n + 2:
        raise ConversionError(f"expected {n + 2}-D kernel, received {kernel.shape}")
    w = ctx.weight(layer, "kernel", _kernel_to_onnx(kernel))
    b = ctx.weight(layer, "bias", to_numpy(layer.bias, np.float32)) if layer.use_bias else None
    y = _conv(ctx, layer, x, w, b, inputs[0], _tuple(layer.kernel_size, n), _tuple(layer.strides, n),
              _tuple(layer.dilation_rate, n), int(layer.groups), layer.padding)
    _finish(ctx, layer, y, perm, outputs)


def _depthwise_kernel(kernel: np.ndarray) -> np.ndarray:
    """(*k, in, mult) -> (in*mult, 1, *k); output channel c*mult + m, as in TensorFlow."""
    n = kernel.ndim - 2
    cin, mult = kernel.shape[-2], kernel.shape[-1]
    k = kernel.reshape((*kernel.shape[:n], cin * mult))
    k = np.transpose(k, (n, *range(n)))  # (in*mult, *k)
    return np.ascontiguousarray(k[:, None])


@HANDLERS.register("DepthwiseConv1D", "DepthwiseConv2D")
def depthwise_conv(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    n = layer.rank
    x, perm = _conv_input(ctx, layer, inputs[0], n)
    kernel = to_numpy(layer.kernel, np.float32)
    cin = kernel.shape[-2]
    w = ctx.weight(layer, "kernel", _depthwise_kernel(kernel))
    b = ctx.weight(layer, "bias", to_numpy(layer.bias, np.float32)) if layer.use_bias else None
    y = _conv(ctx, layer, x, w, b, inputs[0], _tuple(layer.kernel_size, n), _tuple(layer.strides, n),
              _tuple(layer.dilation_rate, n), cin, layer.padding)
    _finish(ctx, layer, y, perm, outputs)


@HANDLERS.register("SeparableConv1D", "SeparableConv2D")
def separable_conv(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    n = layer.rank
    x, perm = _conv_input(ctx, layer, inputs[0], n)
    dk = to_numpy(layer.depthwise_kernel, np.float32)
    pk = to_numpy(layer.pointwise_kernel, np.float32)  # (*1, in*mult, out)
    dw = ctx.weight(layer, "depthwise_kernel", _depthwise_kernel(dk))
    y = _conv(ctx, layer, x, dw, None, inputs[0], _tuple(layer.kernel_size, n), _tuple(layer.strides, n),
              _tuple(layer.dilation_rate, n), dk.shape[-2], layer.padding)
    pw = ctx.weight(layer, "pointwise_kernel", _kernel_to_onnx(pk))
    b = ctx.weight(layer, "bias", to_numpy(layer.bias, np.float32)) if layer.use_bias else None
    ones = [1] * n
    y = ctx.op("Conv", [y, pw] + ([b] if b is not None else []),
               {"kernel_shape": ones, "strides": ones, "pads": [0] * (2 * n)})
    _finish(ctx, layer, y, perm, outputs)


@HANDLERS.register("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
def conv_transpose(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    n = layer.rank
    x, perm = _conv_input(ctx, layer, inputs[0], n)
    kernel = to_numpy(layer.kernel, np.float32)  # (*k, out, in)
    # ONNX ConvTranspose wants (in, out, *k)
    w = ctx.weight(layer, "kernel", np.ascontiguousarray(np.transpose(kernel, (n + 1, n, *range(n)))))
    b = ctx.weight(layer, "bias", to_numpy(layer.bias, np.float32)) if layer.use_bias else None
    ks, st, dl = _tuple(layer.kernel_size, n), _tuple(layer.strides, n), _tuple(layer.dilation_rate, n)
    in_sizes = spatial_dims(inputs[0], layer.data_format)
    out_sizes = spatial_dims(outputs[0], layer.data_format)
    if any(s is None for s in in_sizes + out_sizes):
        raise ConversionError(f"expected static spatial sizes, received input {in_sizes} and output {out_sizes}")
    begins, ends, extra = [], [], []
    for i_sz, o_sz, k, s, d in zip(in_sizes, out_sizes, ks, st, dl):
        full = (i_sz - 1) * s + (k - 1) * d + 1  # the un-cropped transposed-conv length
        if layer.padding == "same":
            # the gradient of a SAME forward conv from o_sz to i_sz: its begin padding is cropped
            begin = max((i_sz - 1) * s + (k - 1) * d + 1 - o_sz, 0) // 2
        else:
            begin = 0
        end = full - o_sz - begin
        begins.append(begin)
        ends.append(max(end, 0))
        extra.append(max(-end, 0))  # output longer than full: ONNX output_padding adds at the end
    attrs = {"kernel_shape": ks, "strides": st, "dilations": dl, "pads": begins + ends}
    if any(extra):
        attrs["output_padding"] = extra
    y = ctx.op("ConvTranspose", [x, w] + ([b] if b is not None else []), attrs)
    _finish(ctx, layer, y, perm, outputs)
