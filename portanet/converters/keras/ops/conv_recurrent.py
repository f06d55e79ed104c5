"""ConvLSTM1D/2D/3D, unrolled over a fixed number of time steps.

ONNX has no convolutional recurrent op, so the recurrence is written out step by step
with Keras' cell exactly (gates i, f, c, o):

    z = conv(x_t, W) + b + conv_same(h, R)           (N, 4F, *S)
    c = ra(z_f) * c + ra(z_i) * act(z_c);  h = ra(z_o) * act(c)

The input convolution runs once over all steps (time folded into the batch). Images are
held channels-first: a sequence ``(N, T, *S, C)`` as ``(N, T, C, *S)``. A symbolic time
axis cannot be unrolled and is refused with that reason; masks and ``stateful=True`` are
refused before converting (see ``masking.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.keras import layout, masking
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.converters.keras.ops.activations import apply
from portanet.converters.keras.ops.conv import _kernel_to_onnx, _tuple, padding_attrs
from portanet.converters.keras.ops.recurrent import _call_parts
from portanet.errors import ConversionError

_KINDS = ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


@masking.refusal(*_KINDS)
def _refused(layer: Any) -> str | None:
    if getattr(layer, "stateful", False):
        return "stateful=True"
    if any(node.input_tensors and node.input_tensors[0].shape[1] is None for node in layer._inbound_nodes):
        return "symbolic time axis: unrolled over a fixed number of steps"
    return None


def _seq_perm(rank: int, channels_last: bool) -> layout.Perm:
    """Keras (N, T, *S, C) -> IR (N, T, C, *S) (identity for channels_first)."""
    return (0, 1, rank - 1, *range(2, rank - 1)) if channels_last else layout.identity(rank)


def _image_perm(rank: int, channels_last: bool) -> layout.Perm:
    """Keras (N, *S, C) -> IR (N, C, *S) (identity for channels_first)."""
    return layout.to_channels_first(rank) if channels_last else layout.identity(rank)


@HANDLERS.register(*_KINDS)
def conv_lstm(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    seq, init, _ = _call_parts(layer, outputs)
    cell = layer.cell
    rank = len(seq.shape)
    n = rank - 3
    steps = seq.shape[1]
    if steps is None:
        raise ConversionError("ConvLSTM is unrolled over its time steps, and this input has a symbolic time axis; "
                              "give the Input a fixed number of steps")
    last = cell.data_format == "channels_last"
    filters = int(cell.filters)
    ks = _tuple(cell.kernel_size, n)
    st = _tuple(cell.strides, n)
    dil = _tuple(cell.dilation_rate, n)
    x = ctx.get(seq, _seq_perm(rank, last))  # (N, T, C, *S)
    shape = ctx.op("Shape", [x])
    # every step's input convolution at once: (N*T, C, *S) -> (N*T, 4F, *S')
    flat = ctx.op("Reshape", [x, ctx.op("Concat", [ctx.ints([-1]), ctx.op("Shape", [x], {"start": 2})],
                                         {"axis": 0})])
    w = ctx.weight(layer, "kernel", _kernel_to_onnx(to_numpy(cell.kernel, np.float32)))
    b = ctx.weight(layer, "bias", to_numpy(cell.bias, np.float32)) if cell.use_bias else None
    sizes = list(seq.shape[2:-1] if last else seq.shape[3:])
    attrs = padding_attrs(cell.padding, sizes, ks, st, dil)
    attrs.update(kernel_shape=ks, strides=st, dilations=dil)
    z = ctx.op("Conv", [flat, w, b] if b is not None else [flat, w], attrs)
    z = ctx.op("Reshape", [z, ctx.op("Concat", [ctx.op("Slice", [shape, ctx.ints([0]), ctx.ints([2])]),
                                                 ctx.op("Shape", [z], {"start": 1})], {"axis": 0})])  # (N, T, 4F, *S')
    out_sizes = [None] * n  # the recurrent convolution keeps the size: SAME, stride 1
    r_attrs = padding_attrs("same", out_sizes, ks, [1] * n, [1] * n)
    r_attrs.update(kernel_shape=ks)
    r = ctx.weight(layer, "recurrent_kernel", _kernel_to_onnx(to_numpy(cell.recurrent_kernel, np.float32)))
    img = _image_perm(rank - 1, last)
    zs = [ctx.op("Gather", [z, ctx.const(t, np.int64)], {"axis": 1}) for t in range(steps)]
    if layer.go_backwards:
        zs = zs[::-1]  # Keras iterates over the reversed sequence and returns outputs in that order
    if init:
        if len(init) != 2:
            raise ConversionError(f"expected 2 initial states, received {len(init)}")
        h, c = (ctx.get(t, img) for t in init)
    else:
        state = ctx.op("Concat", [ctx.op("Slice", [ctx.op("Shape", [zs[0]]), ctx.ints([0]), ctx.ints([1])]),
                                  ctx.ints([filters]), ctx.op("Shape", [zs[0]], {"start": 2})], {"axis": 0})
        h = c = ctx.op("ConstantOfShape", [state], {"value": ir.tensor(np.zeros(1, np.float32))})
    split = ctx.ints([filters] * 4)
    hs = []
    for zt in zs:
        s = ctx.op("Add", [zt, ctx.op("Conv", [h, r], r_attrs)])
        zi, zf, zc, zo = ctx.op("Split", [s, split], {"axis": 1}, outputs=4)
        i = apply(ctx, cell.recurrent_activation, zi, 1)
        f = apply(ctx, cell.recurrent_activation, zf, 1)
        c = ctx.op("Add", [ctx.op("Mul", [f, c]), ctx.op("Mul", [i, apply(ctx, cell.activation, zc, 1)])])
        o = apply(ctx, cell.recurrent_activation, zo, 1)
        h = ctx.op("Mul", [o, apply(ctx, cell.activation, c, 1)])
        hs.append(h)
    if layer.return_sequences:
        y = ctx.op("Concat", [ctx.op("Unsqueeze", [v, ctx.ints([1])]) for v in hs], {"axis": 1})
        ctx.set(outputs[0], y, _seq_perm(rank, last))
    else:
        ctx.set(outputs[0], h, img)
    if layer.return_state:
        ctx.set(outputs[1], h, img)
        ctx.set(outputs[2], c, img)
