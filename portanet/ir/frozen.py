"""Frozen initializers: weights the source framework keeps fixed during training.

Trainability is otherwise derived (float initializers are parameters, BatchNormalization's
running statistics are buffers). Some float initializers are constants in the source:
MXNet ``fix_gamma`` gammas, Keras non-trainable weights and preprocessing constants
(``Rescaling``/``Normalization``), Caffe ``lr_mult: 0`` parameters and the unit scale/zero
shift of a BatchNorm without Scale, PyTorch parameters with ``requires_grad=False``.
Importers mark them with ``mark_frozen``; the torch backend lowers them to constants, so
``portanet train`` leaves them bit-identical, and ``inspect`` counts them.

Storage: an importer marks the initializer's ``ir.Value`` (``metadata_props``); ``record``
(run after every conversion) copies the marks into the model metadata under
``portanet.frozen`` (initializer name -> reason), which survives saving, loading and opset
conversion. ``frozen_names`` reads both.
"""

from __future__ import annotations

import json

import onnx_ir as ir

#: key in a Value's and in the model's metadata_props
FROZEN_KEY = "portanet.frozen"


def mark_frozen(value: ir.Value, reason: str) -> ir.Value:
    """Mark the initializer ``value`` as not trained by the source (``reason`` says why)."""
    value.metadata_props[FROZEN_KEY] = reason
    return value


def _stored(model: ir.Model) -> dict[str, str]:
    raw = model.metadata_props.get(FROZEN_KEY)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def frozen_initializers(model: ir.Model) -> dict[str, str]:
    """Initializer name -> reason, for every frozen initializer the model still has."""
    inits = model.graph.initializers
    out = {k: v for k, v in _stored(model).items() if k in inits}
    for name, value in inits.items():
        reason = value.metadata_props.get(FROZEN_KEY)
        if reason:
            out[name] = reason
    return out


def frozen_names(model: ir.Model) -> set[str]:
    """Names of the frozen initializers of ``model``."""
    return set(frozen_initializers(model))


def record(model: ir.Model) -> ir.Model:
    """Store the marks in the model metadata (so they survive any serialization); returns ``model``."""
    marks = frozen_initializers(model)
    if marks:
        model.metadata_props[FROZEN_KEY] = json.dumps(marks, sort_keys=True)
    else:
        model.metadata_props.pop(FROZEN_KEY, None)
    return model
