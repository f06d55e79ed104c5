"""Max/Average pooling 1D/2D/3D (valid and TensorFlow same) and global pooling."""

from __future__ import annotations

from typing import Any

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext
from portanet.converters.keras.ops._table import HANDLERS
from portanet.converters.keras.ops.conv import _tuple, padding_attrs, spatial_dims

_POOL = {
    "MaxPooling1D": "MaxPool", "MaxPooling2D": "MaxPool", "MaxPooling3D": "MaxPool",
    "AveragePooling1D": "AveragePool", "AveragePooling2D": "AveragePool", "AveragePooling3D": "AveragePool",
}


@HANDLERS.register(*_POOL)
def pool(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    rank = len(inputs[0].shape)
    n = rank - 2
    perm = layout.for_data_format(layer.data_format, rank)
    x = ctx.get(inputs[0], perm)
    ks = _tuple(layer.pool_size, n)
    st = _tuple(layer.strides if layer.strides is not None else layer.pool_size, n)
    attrs = padding_attrs(layer.padding, spatial_dims(inputs[0], layer.data_format), ks, st, [1] * n)
    attrs.update(kernel_shape=ks, strides=st)
    op = _POOL[type(layer).__name__]
    if op == "AveragePool":
        # TensorFlow averages over the valid (unpadded) window only
        attrs["count_include_pad"] = 0
    ctx.set(outputs[0], ctx.op(op, [x], attrs), perm)


_GLOBAL = {
    f"Global{kind}Pooling{d}D": reduce
    for kind, reduce in (("Average", "ReduceMean"), ("Max", "ReduceMax"))
    for d in (1, 2, 3)
}


@HANDLERS.register(*_GLOBAL)
def global_pool(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    from portanet.converters.keras.ops.sequence import masked_average_1d

    if type(layer).__name__ == "GlobalAveragePooling1D" and masked_average_1d(ctx, layer, inputs, outputs):
        return
    rank = len(inputs[0].shape)
    perm = layout.for_data_format(layer.data_format, rank)
    x = ctx.get(inputs[0], perm)
    # (N, C, *spatial) -> (N, C) or, with keepdims, (N, C, 1, ...)
    keep = bool(layer.keepdims)
    y = ctx.op(_GLOBAL[type(layer).__name__], [x, ctx.ints(range(2, rank))], {"keepdims": int(keep)})
    ctx.set(outputs[0], y, perm if keep else layout.identity(2))
