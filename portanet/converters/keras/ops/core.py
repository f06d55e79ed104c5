"""Core layers: Dense (any rank), Embedding, RepeatVector, and identity-at-inference layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from portanet.converters.keras import layout
from portanet.converters.keras.context import KerasContext, to_numpy
from portanet.converters.keras.ops._table import HANDLERS
from portanet.converters.keras.ops.activations import apply_to_output
from portanet.errors import ConversionError
from portanet.ir.metadata import mark_index_bound

#: layers that are the identity at inference time
IDENTITY_LAYERS = (
    "Identity", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
)


@HANDLERS.register(*IDENTITY_LAYERS)
def identity(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x, perm = ctx.get_any(inputs[0])
    ctx.set(outputs[0], ctx.op("Identity", [x]), perm)


@HANDLERS.register("Dense")
def dense(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    # Dense contracts Keras' last axis: (..., in) @ (in, out); needs the Keras order
    x = ctx.get(inputs[0])
    kernel = to_numpy(layer.kernel, np.float32)
    if kernel.ndim != 2:
        raise ConversionError(f"expected a 2-D kernel, received {kernel.shape}")
    y = ctx.op("MatMul", [x, ctx.weight(layer, "kernel", kernel)])
    if layer.use_bias:
        y = ctx.op("Add", [y, ctx.weight(layer, "bias", to_numpy(layer.bias, np.float32))])
    rank = len(outputs[0].shape)
    y = apply_to_output(ctx, layer.activation, y, layout.identity(rank))
    ctx.set(outputs[0], y)


@HANDLERS.register("Embedding")
def embedding(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    ids = ctx.get(inputs[0])
    if ids in ctx.b.inputs and str(inputs[0].dtype).startswith(("int", "uint")):
        mark_index_bound(ids, int(layer.input_dim))  # generated inputs (verify) stay valid ids
    if str(inputs[0].dtype) not in ("int64",):
        ids = ctx.op("Cast", [ids], {"to": 7})  # INT64; Keras casts float ids to int as well
    table = to_numpy(layer.embeddings, np.float32)
    ctx.set(outputs[0], ctx.op("Gather", [ctx.weight(layer, "embeddings", table), ids], {"axis": 0}))


@HANDLERS.register("RepeatVector")
def repeat_vector(ctx: KerasContext, layer: Any, inputs: list, outputs: list) -> None:
    x = ctx.get(inputs[0])  # (N, D)
    y = ctx.op("Unsqueeze", [x, ctx.ints([1])])  # (N, 1, D)
    y = ctx.op("Tile", [y, ctx.ints([1, int(layer.n), 1])])  # (N, n, D)
    ctx.set(outputs[0], y)
