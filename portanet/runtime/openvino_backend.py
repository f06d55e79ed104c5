"""OpenVINO backend (``pip install 'portanet[openvino]'``): Intel's runtime on the CPU.

Inference precision is pinned to f32: OpenVINO's CPU plugin otherwise picks bf16 on
processors that have it, which changes results at the 1e-2 level. A model with a symbolic
batch is reshaped to each new set of input shapes and compiled once per set.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet._deps import require
from portanet.errors import RuntimeBackendError
from portanet.runtime.model_file import TempModelFile, first_line, shape_key
from portanet.runtime.session import Backend

log = logging.getLogger(__name__)
#: compiled models kept per backend (one per distinct set of input shapes)
MAX_COMPILED = 4


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, model: ir.Model, device: str = "cpu", *, intra_op_threads: int | None = None,
                 **_: Any) -> None:
        ov = require("openvino")
        if device != "cpu":
            raise RuntimeBackendError(f"the openvino backend runs on cpu only, not '{device}'")
        self._ov = ov
        self._file = TempModelFile(model, prefix="portanet-ov-")
        self._core = ov.Core()
        self._config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if intra_op_threads:
            self._config["INFERENCE_NUM_THREADS"] = int(intra_op_threads)
        try:
            self._model = self._core.read_model(str(self._file.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError kinds
            raise RuntimeBackendError(f"OpenVINO cannot read the model: {first_line(exc)}") from exc
        self._outputs = [v.name or "" for v in model.graph.outputs]
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()

    def _compiled_for(self, feeds: Mapping[str, np.ndarray]) -> Any:
        key = shape_key(dict(feeds))
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        m = self._model.clone()
        try:
            m.reshape({name: self._ov.PartialShape(list(arr.shape)) for name, arr in feeds.items()})
            compiled = self._core.compile_model(m, "CPU", self._config)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeBackendError(f"OpenVINO cannot compile the model for these inputs: {first_line(exc)}") from exc
        self._compiled[key] = compiled
        if len(self._compiled) > MAX_COMPILED:
            self._compiled.popitem(last=False)
        return compiled

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        compiled = self._compiled_for(feeds)
        names = list(output_names) if output_names else self._outputs
        try:
            result = compiled(dict(feeds))
            return {n: np.asarray(result[compiled.output(n)]) for n in names}
        except Exception as exc:  # noqa: BLE001
            raise RuntimeBackendError(f"OpenVINO failed to run the model: {first_line(exc)}") from exc
