"""Helpers of the quantization tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an .onnx file in plain onnxruntime (independent of portanet's evaluation)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out = np.concatenate([sess.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    return float(np.mean(np.argmax(out, axis=1) == y))
