"""Runtimes: Session over ONNX Runtime ("ort") or torch ("torch"); Trainer for training."""

from portanet.runtime.session import Session, TensorInfo, available_backends

__all__ = ["Session", "TensorInfo", "available_backends", "Trainer", "TrainConfig"]


def __getattr__(name: str):
    # the Trainer needs torch: import it only when asked for
    if name in ("Trainer", "TrainConfig"):
        from portanet.runtime import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'portanet.runtime' has no attribute {name!r}")
