"""ONNX Runtime backend: the fastest inference path."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import RuntimeBackendError
from portanet.runtime.session import Backend

log = logging.getLogger(__name__)
_PROTO_LIMIT = 1_800_000_000


def providers_for(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeBackendError(
                "device 'cuda' requested but ONNX Runtime has no CUDA provider here "
                f"(available: {', '.join(available)}); install 'portanet[gpu]' on a machine with a GPU"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtBackend(Backend):
    name = "ort"

    def __init__(
        self,
        model: ir.Model,
        device: str = "cpu",
        *,
        graph_optimization: bool = True,
        intra_op_threads: int | None = None,
        **_: Any,
    ) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if not graph_optimization:
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if intra_op_threads:
            so.intra_op_num_threads = intra_op_threads
        providers = providers_for(device)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        try:
            consts = [v.const_value for v in model.graph.initializers.values() if v.const_value is not None]
            size = sum(t.nbytes for t in consts)
            external = any(isinstance(t, ir.ExternalTensor) for t in consts)
            if size > _PROTO_LIMIT or external:
                # protobuf cannot hold > 2 GB, and ORT resolves external data relative to a file
                from portanet.ir.io import save_onnx

                self._tmp = tempfile.TemporaryDirectory(prefix="portanet-ort-")
                path = Path(self._tmp.name) / "model.onnx"
                save_onnx(model, path, external_data=True)
                self.session = ort.InferenceSession(str(path), so, providers=providers)
            else:
                data = ir.serde.serialize_model(model).SerializeToString()
                self.session = ort.InferenceSession(data, so, providers=providers)
        except RuntimeBackendError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeBackendError(f"ONNX Runtime cannot load the model: {msg}") from exc

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else [o.name for o in self.session.get_outputs()]
        try:
            results = self.session.run(names, dict(feeds))
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeBackendError(f"ONNX Runtime failed to run the model: {msg}") from exc
        return dict(zip(names, results))
