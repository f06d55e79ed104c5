"""Measuring a (quantized) model against its float original: outputs on the test split,
top-1 accuracy or agreement, output error, file size and ONNX Runtime latency."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: samples per ONNX Runtime call when evaluating
EVAL_BATCH = 256


def run_outputs(model: Any, input_name: str, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """The first output of ``model`` (an ``ir.Model`` or a path) on ``x``, run by ONNX Runtime in batches."""
    from portanet.runtime.session import Session

    sess = Session(model, backend="ort")
    out = [np.asarray(next(iter(sess.run({input_name: x[i:i + batch]}).values())))
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def has_class_axis(y: np.ndarray) -> bool:
    """(N, C, ...) scores with C >= 2 along axis 1."""
    return y.ndim >= 2 and y.shape[1] >= 2


@dataclass
class Metrics:
    """One model's outputs on the test split, against the labels and the float model's outputs."""

    #: top-1 accuracy against the labels (None without labels or class axis)
    accuracy: float | None
    #: fraction of samples whose top-1 class equals the float model's (None without a class axis)
    agreement: float | None
    #: cosine similarity of all outputs with the float model's
    cosine: float
    #: max |q - f| / max |f|
    max_rel: float
    #: ||q - f||^2 / ||f||^2 (the sensitivity measure of the fallback)
    rel_mse: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metrics(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> Metrics:
    """Compare outputs ``out`` with the float model's ``ref`` (same shapes) and with ``labels``."""
    o, r = out.astype(np.float64), ref.astype(np.float64)
    diff = o - r
    ref_sq = float(np.sum(r * r))
    no, nr = float(np.linalg.norm(o)), float(np.linalg.norm(r))
    cosine = 1.0 if no == nr == 0.0 else (float(np.sum(o * r)) / (no * nr) if no and nr else 0.0)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    max_abs = float(np.max(np.abs(diff))) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    rel_mse = float(np.sum(diff * diff)) / ref_sq if ref_sq > 0 else float(np.sum(diff * diff))
    accuracy = agreement = None
    if has_class_axis(r):
        top_o, top_r = np.argmax(o, axis=1), np.argmax(r, axis=1)
        agreement = float(np.mean(top_o == top_r))
        if labels is not None:
            accuracy = float(np.mean(top_o.reshape(len(labels), -1)[:, 0] == labels))
    return Metrics(accuracy, agreement, cosine, max_rel, rel_mse)


def accuracy_drop(float_m: Metrics, quant_m: Metrics) -> float | None:
    """Points lost: accuracy (labelled data) or top-1 disagreement with the float model (unlabelled
    classifier outputs); None when neither exists."""
    if float_m.accuracy is not None and quant_m.accuracy is not None:
        return 100.0 * (float_m.accuracy - quant_m.accuracy)
    if quant_m.agreement is not None:
        return 100.0 * (1.0 - quant_m.agreement)
    return None


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of an .onnx file and its external-data files beside it."""
    p = Path(path)
    return p.stat().st_size + sum(f.stat().st_size for f in p.parent.glob(p.name + ".data*"))


def latency_ms(model: Any, batches: Sequence[int], **bench: Any) -> dict[int, float]:
    """p50 ONNX Runtime latency (ms) per batch size (``portanet.runtime.bench``; random inputs)."""
    from portanet.runtime.bench import bench_model

    return {r.batch: r.p50_ms for r in bench_model(model, backends=("ort",), batch_sizes=list(batches), **bench)}
