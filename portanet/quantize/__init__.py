"""Deployment precision: int8 quantization (ONNX Runtime's quantizer, calibrated on the user's
data, with accuracy measured and a sensitivity-guided float fallback) and float16.

    from portanet.quantize import QuantizeOptions, quantize
    result = quantize(model, "mnist/", QuantizeOptions(max_accuracy_drop=0.5))
    print(result.report.summary()); portanet.save(result.model, "q.onnx")
"""

from portanet.quantize.api import QuantizeOptions, QuantizeResult, check_quantizable, quantize, quantize_file
from portanet.quantize.calibration import CALIBRATIONS
from portanet.quantize.engine import MODES
from portanet.quantize.fp16 import FP16_ATOL, FP16_RTOL, fp16_parity, to_float16
from portanet.quantize.report import QuantizeReport

__all__ = [
    "CALIBRATIONS",
    "FP16_ATOL",
    "FP16_RTOL",
    "MODES",
    "QuantizeOptions",
    "QuantizeReport",
    "QuantizeResult",
    "check_quantizable",
    "fp16_parity",
    "quantize",
    "quantize_file",
    "to_float16",
]
