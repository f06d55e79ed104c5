"""The model as a portable ONNX file in a private temporary folder, for runtimes that read
files (OpenVINO, OpenCV DNN, tract): written by ``save_onnx``, so they read exactly what
``portanet convert`` would give a user."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir


class TempModelFile:
    """``TempModelFile(model).path`` is the model saved as ONNX; ``close()`` (or garbage
    collection) removes the folder."""

    def __init__(self, model: ir.Model, prefix: str = "portanet-") -> None:
        from portanet.ir.io import save_onnx

        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        self.path: Path = save_onnx(model, Path(self._dir.name) / "model.onnx")

    def close(self) -> None:
        self._dir.cleanup()


def shape_key(feeds: dict[str, np.ndarray]) -> tuple:
    """A hashable key of the feeds' names, shapes and dtypes (one compiled model per key)."""
    return tuple((k, tuple(v.shape), v.dtype.str) for k, v in sorted(feeds.items()))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (runtimes print C++ backtraces after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
