"""Lazy imports of optional frameworks with an install hint when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from portanet.errors import MissingDependencyError

_EXTRA = {
    "torch": ("torch", "torch"),
    "tensorflow": ("tensorflow-cpu", "tf"),
    "keras": ("tensorflow-cpu", "tf"),
    "tf2onnx": ("tf2onnx", "tf"),
    "h5py": ("h5py", "keras-files"),
    "cv2": ("opencv-python-headless", "caffe-ref"),
    "matplotlib": ("matplotlib", "torch"),
    "openvino": ("openvino", "openvino"),
    "tract": ("tract", "tract"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = _EXTRA.get(top, (top, "all"))
        raise MissingDependencyError(package, extra) from exc
