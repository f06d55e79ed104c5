"""Keras layer handlers, one module per layer family.

A handler is ``fn(ctx, layer, inputs, outputs)``: ``inputs``/``outputs`` are the node's
Keras tensors; the handler emits IR through ``ctx`` and records every output tensor.
"""

from portanet.converters.keras.ops import (  # noqa: F401  (imported for registration)
    activations,
    attention,
    conv,
    conv_recurrent,
    core,
    keras_ops,
    merge,
    norm,
    pooling,
    preprocessing,
    recurrent,
    reshape,
    sequence,
)
from portanet.converters.keras.ops._table import HANDLERS

__all__ = ["HANDLERS"]
