"""The quantization engine: ONNX Runtime's ``onnxruntime.quantization``, one entry per ``--mode``.

portanet does not re-implement quantization: it prepares the model (``-O2``), the data
(calibration samples) and the choice of nodes, and lets ONNX Runtime insert the QDQ pairs
(static) or the integer MatMuls (dynamic). ONNX Runtime logs advice on the root logger and
warns through ``warnings``; both are kept out of portanet's output (``quiet``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portanet.errors import InvalidInputError
from portanet.quantize.calibration import ArrayReader, Calibration

log = logging.getLogger(__name__)

#: calibration samples per ONNX Runtime collection pass: the calibrator keeps every intermediate tensor
#: of the samples of one pass in memory (ResNet-50 at 224x224: ~80 MB a sample), then merges ranges
CALIBRATION_STRIDE = 8

#: op types dynamic quantization converts: ORT's CPU kernels quantize MatMul/Gemm activations at run
#: time; its ConvInteger has no int8-weight CPU kernel, so convolutions stay float in this mode
DYNAMIC_OPS = ("MatMul", "Gemm")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence ONNX Runtime's quantization tooling (root-logger advice, Python warnings, and the
    histogram calibrators' progress ``print``s)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@dataclass
class Job:
    """One engine run: ``source`` (float .onnx) -> ``target`` (quantized .onnx)."""

    source: Path
    target: Path
    reader: ArrayReader | None
    calibration: Calibration | None
    per_channel: bool = True
    #: node names to leave in float (fallback)
    exclude: Sequence[str] = ()
    #: quantize only these node names (empty: every node ORT can quantize)
    include: Sequence[str] = ()
    #: a file the activation ranges are stored in and re-read from (one calibration per model)
    cache: Path | None = None


Engine = Callable[[Job], None]
MODES: dict[str, tuple[str, Engine]] = {}


def mode(name: str, description: str) -> Callable[[Engine], Engine]:
    def deco(fn: Engine) -> Engine:
        MODES[name] = (description, fn)
        return fn

    return deco


def engine(name: str) -> Engine:
    if name not in MODES:
        raise InvalidInputError(f"unknown quantization mode '{name}'; known: {', '.join(MODES)}")
    return MODES[name][1]


def _supports_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _stride(n: int) -> int:
    """The largest divisor of ``n`` up to ``CALIBRATION_STRIDE`` (ONNX Runtime needs an exact split)."""
    return next(s for s in range(min(n, CALIBRATION_STRIDE), 0, -1) if n % s == 0)


@mode("static", "int8 weights (per channel) and int8 activations with calibrated ranges, QDQ form")
def run_static(job: Job) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    assert job.reader is not None and job.calibration is not None
    kwargs: dict[str, Any] = {}
    if job.cache is not None and _supports_cache():
        kwargs["calibration_cache_path"] = str(job.cache)
    job.reader.rewind()
    with quiet():
        quantize_static(
            str(job.source), str(job.target), job.reader,
            quant_format=QuantFormat.QDQ,
            per_channel=job.per_channel,
            # x86 with VNNI (and ARM) accumulate u8 x s8 products without saturation: full 8-bit range
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(job.include) or None,
            nodes_to_exclude=list(job.exclude) or None,
            calibrate_method=job.calibration.method(),
            extra_options={**job.calibration.options, "CalibStridedMinMax": _stride(len(job.reader))},
            **kwargs,
        )


@mode("dynamic", "int8 weights of MatMul/Gemm; activations quantized at run time (no calibration)")
def run_dynamic(job: Job) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(
            str(job.source), str(job.target),
            op_types_to_quantize=list(DYNAMIC_OPS),
            per_channel=job.per_channel,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(job.include) or None,
            nodes_to_exclude=list(job.exclude) or None,
        )
