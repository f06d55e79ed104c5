"""tract backend (``pip install 'portanet[tract]'``): Sonos' Rust inference engine.

tract optimizes a model for fixed input shapes: the input facts are set to the feeds'
shapes and types, and one optimized plan is kept per distinct set of shapes.
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
MAX_PLANS = 4
#: numpy dtype -> tract's datum type name in a fact string
_DATUM = {
    "float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32",
    "int16": "i16", "int8": "i8", "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64", "bool": "bool",
}


class TractBackend(Backend):
    name = "tract"

    def __init__(self, model: ir.Model, device: str = "cpu", **_: Any) -> None:
        self._tract = require("tract")
        if device != "cpu":
            raise RuntimeBackendError(f"the tract backend runs on cpu only, not '{device}'")
        self._file = TempModelFile(model, prefix="portanet-tract-")
        self._load()  # fail early on a file tract cannot read
        # tract keeps the graph's input and output order (its own names are node names)
        inits = set(model.graph.initializers)
        self._inputs = [v.name or "" for v in model.graph.inputs if v.name not in inits]
        self._outputs = [v.name or "" for v in model.graph.outputs]
        self._plans: OrderedDict[tuple, Any] = OrderedDict()

    def _load(self) -> Any:
        try:
            return self._tract.onnx().load(str(self._file.path))
        except Exception as exc:  # noqa: BLE001 - tract raises TractError
            raise RuntimeBackendError(f"tract cannot read the model: {first_line(exc)}") from exc

    def _plan_for(self, feeds: Mapping[str, np.ndarray]) -> Any:
        key = shape_key(dict(feeds))
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        m = self._load()
        try:
            for i, name in enumerate(self._inputs):
                arr = feeds[name]
                datum = _DATUM.get(arr.dtype.name)
                if datum is None:
                    raise RuntimeBackendError(f"tract takes no {arr.dtype} input ('{name}')")
                m.set_input_fact(i, ",".join([*map(str, arr.shape), datum]))
            plan = m.into_model().into_runnable()
        except RuntimeBackendError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise RuntimeBackendError(f"tract cannot prepare the model for these inputs: {first_line(exc)}") from exc
        self._plans[key] = plan
        if len(self._plans) > MAX_PLANS:
            self._plans.popitem(last=False)
        return plan

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        plan = self._plan_for(feeds)
        try:
            results = plan.run([feeds[n] for n in self._inputs])
            got = {n: np.asarray(t.to_numpy()) for n, t in zip(self._outputs, results)}
        except Exception as exc:  # noqa: BLE001
            raise RuntimeBackendError(f"tract failed to run the model: {first_line(exc)}") from exc
        names = list(output_names) if output_names else self._outputs
        missing = [n for n in names if n not in got]
        if missing:
            raise RuntimeBackendError(f"tract runs graph outputs only; not {', '.join(missing)}")
        return {n: got[n] for n in names}
