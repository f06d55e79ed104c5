"""Parity: reference runners per source framework, comparison, bisection, reports.

    report = portanet.parity.verify("resnet18.pt2", shapes=["1x3x224x224"])
    print(report.summary()); report.raise_on_failure(); report.write_certificate(model)
"""

from portanet.parity.bisect import BisectResult, bisect, layer_points, prefix_model
from portanet.parity.compare import DEFAULT_ATOL, DEFAULT_RTOL, TensorStats, compare
from portanet.parity.gradients import GradientReport, gradient_parity
from portanet.parity.report import VerifyReport
from portanet.parity.verify import run_bisect, verify, verify_model

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "BisectResult",
    "GradientReport",
    "TensorStats",
    "VerifyReport",
    "bisect",
    "compare",
    "gradient_parity",
    "layer_points",
    "prefix_model",
    "run_bisect",
    "verify",
    "verify_model",
]
