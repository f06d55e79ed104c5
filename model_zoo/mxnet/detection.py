"""MXNet detection-op references (``detection_build.py`` run by the mxnet side environment),
built once and cached under ``cache_dir('mxnet-det', <hash of detection_build.py>)``."""

from __future__ import annotations

from pathlib import Path

from model_zoo.mxnet import build_side_references, mxnet_env


def build_detection() -> tuple[Path, list[dict]]:
    """(folder, manifest) of the detection references; built on first use."""
    return build_side_references("detection_build.py", "mxnet-det", mxnet_env(), "detection")
