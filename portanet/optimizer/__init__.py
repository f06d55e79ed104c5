"""Graph optimizer: passes that make converted models smaller and faster without changing a number.

Levels: ``0`` nothing; ``1`` clean-up that keeps the model trainable (default of ``convert``);
``2`` inference: also folds BatchNorm, Dropout and constant Mul/Add into weights (default of
``optimize``). Each pass lives in its own module as an ``onnx_ir`` in-place pass; the
pipeline repeats them until none changes the model.

    from portanet.optimizer import optimize
    model = optimize(model, level=2, check=True)   # check: ORT guard after every pass
"""

from portanet.optimizer.base import PASSES, OptimizerPass, passes_for, register_pass
from portanet.optimizer.guard import OptimizerCheckError
from portanet.optimizer.pipeline import ModelStats, OptimizeResult, Pipeline, optimize, optimize_with_report


def available_passes() -> dict[str, int]:
    """Pass name -> the lowest level that runs it, in pipeline order."""
    return {p.name: p.level for p in passes_for(2, None) + [p for p in PASSES.values() if p.level == 0]}


__all__ = [
    "PASSES",
    "ModelStats",
    "OptimizeResult",
    "OptimizerCheckError",
    "OptimizerPass",
    "Pipeline",
    "available_passes",
    "optimize",
    "optimize_with_report",
    "passes_for",
    "register_pass",
]
