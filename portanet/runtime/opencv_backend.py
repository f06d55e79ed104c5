"""OpenCV DNN backend (``pip install 'portanet[caffe-ref]'``): ``cv2.dnn.readNetFromONNX``
on the CPU with OpenCV's own kernels (no fusion surprises from other DNN backends).

A network is read once per distinct set of input shapes: OpenCV does re-allocate its blobs
when the batch changes, but some layers keep what they computed for the first shape (a
ResNet's results at batch 3 after a run at batch 1 were wrong, a fresh network's right).
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
from portanet.runtime.model_file import TempModelFile, shape_key
from portanet.runtime.session import Backend

log = logging.getLogger(__name__)
MAX_NETS = 4


def _quiet(cv2: Any) -> None:
    """OpenCV logs import problems to stderr itself; portanet reports them as errors."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging utilities
        pass


class OpenCvBackend(Backend):
    name = "opencv"

    def __init__(self, model: ir.Model, device: str = "cpu", **_: Any) -> None:
        cv2 = require("cv2")
        if device != "cpu":
            raise RuntimeBackendError(f"the opencv backend runs on cpu only, not '{device}'")
        _quiet(cv2)
        self._cv2 = cv2
        file = TempModelFile(model, prefix="portanet-cv-")
        try:
            self._bytes = file.path.read_bytes()
        finally:
            file.close()
        self._nets: OrderedDict[tuple, Any] = OrderedDict()
        self._spare: Any = self._read()  # read now: a file OpenCV cannot read fails the session
        self._outputs = [v.name or "" for v in model.graph.outputs]
        self._declared = {v.name: (None if v.shape is None else [d if isinstance(d, int) else None for d in v.shape])
                          for v in model.graph.outputs}

    def _read(self) -> Any:
        cv2 = self._cv2
        try:
            net = cv2.dnn.readNetFromONNX(np.frombuffer(self._bytes, np.uint8))
        except cv2.error as exc:
            raise RuntimeBackendError(f"OpenCV DNN cannot read the model: {_cv_message(exc)}") from exc
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        # OpenCV's Winograd 3x3 convolutions trade accuracy for speed (errors ~5e-4 on an
        # Inception-v3); the direct algorithm keeps OpenCV within the usual float32 tolerance
        net.enableWinograd(False)
        return net

    def _net_for(self, feeds: Mapping[str, np.ndarray]) -> Any:
        key = shape_key(dict(feeds))
        if key not in self._nets:
            self._nets[key] = self._spare if self._spare is not None else self._read()
            self._spare = None
            if len(self._nets) > MAX_NETS:
                self._nets.popitem(last=False)
        self._nets.move_to_end(key)
        return self._nets[key]

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(output_names) if output_names else self._outputs
        net = self._net_for(feeds)
        try:
            for name, arr in feeds.items():
                net.setInput(arr, name)
            outs = net.forward(names)
        except self._cv2.error as exc:
            raise RuntimeBackendError(f"OpenCV DNN failed to run the model: {_cv_message(exc)}") from exc
        return {n: self._declared_rank(n, np.asarray(o)) for n, o in zip(names, outs)}

    def _declared_rank(self, name: str, a: np.ndarray) -> np.ndarray:
        """OpenCV's blobs have at least two dims: a (N,) output comes back as (N, 1). Give it
        the declared rank when that is unambiguous (at most one unknown dim); same data."""
        dims = self._declared.get(name)
        if dims is None or a.ndim == len(dims) or sum(d is None for d in dims) > 1:
            return a
        known = int(np.prod([d for d in dims if d is not None], dtype=np.int64))
        if known == 0 or a.size % known:
            return a
        return a.reshape([a.size // known if d is None else d for d in dims])


def _cv_message(exc: BaseException) -> str:
    """OpenCV's errors read 'OpenCV(4.x) file:line: error: (-215:...) what in function f':
    keep the innermost reason."""
    lines = [ln.strip().lstrip("> ").strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if "error:" in ln] or lines or [type(exc).__name__]
    return useful[-1].split("error:", 1)[-1].strip()
