"""Runtimes: Session over ONNX Runtime ("ort") or torch ("torch"); Trainer for training."""

from portanet.runtime.session import Session, TensorInfo, available_backends

__all__ = ["Session", "TensorInfo", "available_backends"]
