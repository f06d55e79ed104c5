"""Model description for `portanet inspect` (pure data; the CLI renders it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.ir.frozen import frozen_names
from portanet.ir.io import model_opset
from portanet.ir.metadata import read_metadata
from portanet.ir.provenance import provenance_summary


def buffer_names(model: ir.Model) -> set[str]:
    """Initializers that are state, not parameters: BatchNormalization running mean/var."""
    out: set[str] = set()
    for node in model.graph.all_nodes():
        if node.op_type == "BatchNormalization" and len(node.inputs) >= 5:
            for v in node.inputs[3:5]:
                if v is not None and v.name:
                    out.add(v.name)
    return out


def _dims(v: ir.Value) -> list[Any] | None:
    if v.shape is None:
        return None
    return [d if isinstance(d, int) else getattr(d, "value", None) for d in v.shape]


def describe(model: ir.Model, path: Path | str | None = None) -> dict[str, Any]:
    inits = model.graph.initializers
    buffers = buffer_names(model)
    frozen = frozen_names(model)
    trainable = buf_values = frozen_values = nbytes = 0
    for name, v in inits.items():
        t = v.const_value
        if t is None:
            continue
        nbytes += t.nbytes
        if name in buffers:
            buf_values += t.size
        elif name in frozen:  # float weights the source never trains (see portanet.ir.frozen)
            frozen_values += t.size
        elif v.dtype is not None and v.dtype.is_floating_point():
            trainable += t.size
    ops = Counter(n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in model.graph.all_nodes())

    def tinfo(v: ir.Value) -> dict[str, Any]:
        return {"name": v.name, "shape": _dims(v), "dtype": str(np.dtype(v.dtype.numpy())) if v.dtype else "?"}

    return {
        "file": str(path) if path is not None else None,
        "opset": model_opset(model),
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name or '?'} {model.producer_version or ''}".strip(),
        "inputs": [tinfo(v) for v in model.graph.inputs if v.name not in inits],
        "outputs": [tinfo(v) for v in model.graph.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "parameters": {"trainable": trainable, "buffers": buf_values, "frozen": frozen_values,
                       "frozen_tensors": len(frozen), "tensors": len(inits), "bytes": nbytes},
        "provenance": provenance_summary(model.graph),
        "metadata": read_metadata(model),
    }
