"""Calibration: the methods ``--calibration`` names and the data reader ONNX Runtime's quantizer pulls from.

Each method maps to an ``onnxruntime.quantization.CalibrationMethod`` plus the calibrator
options that make it behave as documented here:

* ``minmax``: the observed minimum and maximum of every activation over the calibration set.
* ``entropy``: the range minimising the KL divergence between the float histogram and its
  int8 quantization (TensorRT's method) -- clips rare outliers.
* ``percentile``: the symmetric range covering 99.999 % of the observed magnitudes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from portanet.errors import InvalidInputError


@dataclass(frozen=True)
class Calibration:
    name: str
    description: str
    #: () -> onnxruntime.quantization.CalibrationMethod (imported lazily)
    method: Callable[[], Any]
    #: quantize_static ``extra_options`` of this method
    options: dict[str, Any] = field(default_factory=dict)


CALIBRATIONS: dict[str, Calibration] = {}


def register(cal: Calibration) -> Calibration:
    CALIBRATIONS[cal.name] = cal
    return cal


def _method(name: str) -> Callable[[], Any]:
    def get() -> Any:
        from onnxruntime.quantization import CalibrationMethod

        return getattr(CalibrationMethod, name)

    return get


register(Calibration("minmax", "observed min/max of every activation", _method("MinMax")))
register(Calibration("entropy", "KL-divergence-optimal range (clips rare outliers)", _method("Entropy")))
register(Calibration("percentile", "symmetric range covering 99.999% of magnitudes", _method("Percentile"),
                     {"CalibPercentile": 99.999}))


def calibration(name: str) -> Calibration:
    """The calibration method called ``name``."""
    try:
        return CALIBRATIONS[name]
    except KeyError:
        raise InvalidInputError(f"unknown calibration '{name}'; known: {', '.join(CALIBRATIONS)}") from None


class ArrayReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over prepared samples (N, ...), in batches.

    Written as a plain class with the reader protocol (``get_next``, ``__len__``, ``set_range``) so
    that importing portanet does not import onnxruntime.quantization.
    """

    def __init__(self, input_name: str, x: np.ndarray, batch: int = 16) -> None:
        self.input_name = input_name
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.batch = max(1, batch)
        self.start, self.end = 0, len(self.x)
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.start, self.end, self.batch):
            yield {self.input_name: self.x[i:min(i + self.batch, self.end)]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, end_index
        self._it = None

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches()
