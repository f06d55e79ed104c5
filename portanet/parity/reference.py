"""Dispatch to the reference runner of a source framework (``portanet.parity.runners.<name>``)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from portanet.errors import InvalidInputError

#: importer name -> runner module (the ONNX runner also serves sources that are plain ONNX)
RUNNERS = {
    "pytorch": "portanet.parity.runners.pytorch",
    "keras": "portanet.parity.runners.keras",
    "caffe": "portanet.parity.runners.caffe",
    "mxnet": "portanet.parity.runners.mxnet",
    "cntk": "portanet.parity.runners.cntk",
    "onnx": "portanet.parity.runners.onnx",
}


def runner_for(framework: str) -> Any:
    """The runner module of ``framework``; InvalidInputError if there is none."""
    mod = RUNNERS.get(framework)
    if mod is None:
        raise InvalidInputError(f"no reference runner for framework '{framework}'; known: {', '.join(RUNNERS)}")
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        if exc.name == mod:
            raise InvalidInputError(f"the {framework} reference runner is not available in this build") from exc
        raise


def run_reference(
    framework: str,
    sources: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    output_names: Sequence[str],
    layers: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run the source; returns (outputs keyed by the IR's output names, layer outputs by layer name).

    Runners that key outputs by the source's own names are mapped onto the IR's outputs in order.
    """
    runner = runner_for(framework)
    opts = dict(options or {})
    opts.setdefault("output_names", list(output_names))
    result = runner.run_reference(sources, feeds, layers=list(layers or []), options=opts)
    layer_set = set(layers or [])
    outputs: dict[str, np.ndarray] = {}
    rest = [k for k in result if k not in output_names and k not in layer_set]
    for name in output_names:
        if name in result:
            outputs[name] = np.asarray(result[name])
    missing = [n for n in output_names if n not in outputs]
    if missing:
        if len(rest) < len(missing):
            raise InvalidInputError(
                f"the {framework} reference produced outputs {', '.join(result)}, the converted model expects "
                f"{', '.join(output_names)}"
            )
        for name, key in zip(missing, rest):
            outputs[name] = np.asarray(result[key])
    layer_out = {k: np.asarray(result[k]) for k in layers or [] if k in result}
    return outputs, layer_out
