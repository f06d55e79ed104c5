"""Session: run an IR model on a backend and device ("cpu" or "cuda").

Backends: ``ort`` (ONNX Runtime), ``torch`` (the IR lowered to torch.fx; trainable),
``openvino``, ``opencv`` (OpenCV DNN) and ``tract``; the last three are optional extras,
imported when a session asks for them.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError, RuntimeBackendError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: np.dtype

    def concrete_shape(self, batch: int = 1, default: int = 1) -> tuple[int, ...]:
        """A shape to make random data for: symbolic batch -> ``batch``, others -> ``default``."""
        if self.shape is None:
            raise InvalidInputError(f"input '{self.name}' has no declared shape; pass --input")
        return tuple(
            d if isinstance(d, int) else (batch if i == 0 else default) for i, d in enumerate(self.shape)
        )


class Backend(ABC):
    name = ""

    @abstractmethod
    def __init__(self, model: ir.Model, device: str, **options: Any) -> None: ...

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        ...


_BACKENDS: dict[str, str] = {
    "ort": "portanet.runtime.ort_backend:OrtBackend",
    "torch": "portanet.runtime.torch_backend:TorchBackend",
    "openvino": "portanet.runtime.openvino_backend:OpenVinoBackend",
    "opencv": "portanet.runtime.opencv_backend:OpenCvBackend",
    "tract": "portanet.runtime.tract_backend:TractBackend",
}


def available_backends() -> list[str]:
    return list(_BACKENDS)


def _backend_class(name: str) -> type[Backend]:
    if name not in _BACKENDS:
        raise InvalidInputError(f"unknown backend '{name}'; known: {', '.join(_BACKENDS)}")
    mod, _, cls = _BACKENDS[name].partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        if exc.name == mod:
            raise RuntimeBackendError(f"backend '{name}' is not available in this build") from exc
        raise
    return getattr(module, cls)


def _as_model(model: ir.Model | str | os.PathLike[str] | Any) -> ir.Model:
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, str | os.PathLike):
        from portanet.ir.io import load_onnx

        return load_onnx(model, upgrade=False)
    import onnx

    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    raise InvalidInputError(f"cannot make a session from {type(model).__name__}")


def _dtype_of(v: ir.Value) -> np.dtype:
    if v.dtype is None:
        return np.dtype(np.float32)
    return np.dtype(v.dtype.numpy())


def _dims(v: ir.Value) -> tuple[int | str | None, ...] | None:
    if v.shape is None:
        return None
    return tuple(d if isinstance(d, int) else getattr(d, "value", None) for d in v.shape)


class Session:
    """Run a model: ``Session(model, backend="ort", device="cpu").run({"x": array})``.

    ``model`` is an ``onnx_ir.Model``, an ``onnx.ModelProto`` or a path to an ``.onnx`` file.
    """

    def __init__(self, model: Any, backend: str = "ort", device: str = "cpu", **options: Any) -> None:
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise InvalidInputError(f"unknown device '{device}'; use cpu or cuda")
        self.model = _as_model(model)
        self.backend_name = backend
        self.device = device
        init_names = set(self.model.graph.initializers)
        self.inputs = [
            TensorInfo(v.name or "", _dims(v), _dtype_of(v)) for v in self.model.graph.inputs if v.name not in init_names
        ]
        self.outputs = [TensorInfo(v.name or "", _dims(v), _dtype_of(v)) for v in self.model.graph.outputs]
        self._backend = _backend_class(backend)(self.model, device, **options)

    def check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate names, ranks, fixed dims and dtypes of ``feeds``; cast float64 -> declared float."""
        known = {i.name: i for i in self.inputs}
        unknown = sorted(set(feeds) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown input(s) {', '.join(unknown)}; the model takes {', '.join(known)}")
        missing = [n for n in known if n not in feeds]
        if missing:
            raise InvalidInputError(f"missing input(s): {', '.join(missing)}")
        out: dict[str, np.ndarray] = {}
        for name, arr in feeds.items():
            info = known[name]
            a = np.asarray(arr)
            if a.dtype != info.dtype:
                if a.dtype.kind == info.dtype.kind or (a.dtype.kind in "iu" and info.dtype.kind in "iu"):
                    a = a.astype(info.dtype)
                else:
                    raise InvalidInputError(f"input '{name}' expects {info.dtype}, received {a.dtype}")
            if info.shape is not None:
                if a.ndim != len(info.shape):
                    raise InvalidInputError(
                        f"input '{name}' expects rank {len(info.shape)} {list(info.shape)}, received shape {list(a.shape)}"
                    )
                for i, (want, got) in enumerate(zip(info.shape, a.shape)):
                    if isinstance(want, int) and want != got:
                        raise InvalidInputError(
                            f"input '{name}' expects shape {list(info.shape)}, received {list(a.shape)} (dim {i})"
                        )
            out[name] = a if a.flags.c_contiguous else np.ascontiguousarray(a)  # keeps 0-d arrays 0-d
        return out

    def run(
        self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run the model; returns {output name: array}."""
        return self._backend.run(self.check_feeds(feeds), output_names)

    def random_feeds(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded random inputs of the declared shapes (symbolic batch -> ``batch``)."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for info in self.inputs:
            shape = info.concrete_shape(batch)
            if info.dtype.kind == "f":
                feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
            elif info.dtype.kind in "iu":
                feeds[info.name] = rng.integers(0, 10, size=shape).astype(info.dtype)
            else:
                feeds[info.name] = rng.integers(0, 2, size=shape).astype(info.dtype)
        return feeds
