"""float16: weights and compute in half precision, float32 graph inputs and outputs.

The conversion is ONNX Runtime's (``onnxruntime.transformers.float16``): float initializers
and value types become float16, Cast nodes keep the graph's inputs and outputs float32, and
blocked ops stay float32 behind Casts. Blocked, besides ONNX Runtime's own list (ops without
float16 kernels), are the ops whose intermediates overflow float16's range (max 65504):
sums of squares (LRN, Lp/L2 norms, ReduceSumSquare) and the normalisations that compute a
variance (Instance/Layer/Group normalisation).

Parity with float32 is judged at float16 tolerances (``FP16_RTOL``/``FP16_ATOL``, the
scale-relative test of ``portanet.parity.compare``): float16 keeps 11 significant bits, a
unit roundoff of 2**-11 = 4.9e-4. Every layer boundary rounds activations (and every weight
is rounded once), so an output carries the roundoff of the ~10-50 layers in front of it;
1e-2 of the output's scale is ~20 roundoffs, the room a non-amplifying network of that depth
needs. ``FP16_ATOL`` 1e-3 covers outputs whose scale is itself below 0.1 (probabilities).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError
from portanet.parity.compare import TensorStats, compare
from portanet.quantize.engine import quiet

log = logging.getLogger(__name__)

FP16_RTOL = 1e-2
FP16_ATOL = 1e-3
#: float16's largest finite value
FP16_MAX = 65504.0
#: ops kept float32 because their intermediates overflow float16
OVERFLOW_OPS = ("LRN", "LpNormalization", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
                "InstanceNormalization", "LayerNormalization", "GroupNormalization")


def keep_float32_ops(extra: Iterable[str] = ()) -> list[str]:
    """Op types left in float32: ONNX Runtime's block list, the overflow-prone ops and ``extra``."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    return sorted(set(DEFAULT_OP_BLOCK_LIST) | set(OVERFLOW_OPS) | set(extra))


def to_float16(model: ir.Model, *, keep_ops: Iterable[str] = ()) -> ir.Model:
    """A float16 copy of ``model`` with float32 inputs and outputs (``model`` is unchanged)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    floats = [v.const_value for v in model.graph.initializers.values()
              if v.const_value is not None and v.const_value.dtype == ir.DataType.FLOAT]
    if not floats:
        raise InvalidInputError("the model has no float32 weights to convert to float16")
    big = sum(int(np.sum(np.abs(t.numpy()) > FP16_MAX)) for t in floats)
    if big:
        log.warning("%d weight value(s) exceed float16's range and are clipped to +-%g", big, FP16_MAX)
    proto = ir.serde.serialize_model(model)
    with quiet():
        half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=keep_float32_ops(keep_ops))
    out = ir.serde.deserialize_model(half)
    out.graph.sort()  # the converter appends its input Casts after their consumers
    out.metadata_props["portanet.precision"] = "float16"
    return out


def fp16_parity(
    reference: ir.Model, half: ir.Model, feeds: Mapping[str, np.ndarray], *,
    rtol: float = FP16_RTOL, atol: float = FP16_ATOL,
) -> dict[str, TensorStats]:
    """Each output of ``half`` against float32 ``reference`` on ``feeds`` (ONNX Runtime), judged
    by the scale-relative test at float16 tolerances."""
    from portanet.runtime.session import Session

    ref = Session(reference, backend="ort").run(feeds)
    got = Session(half, backend="ort").run(feeds)
    return {name: compare(ref[name], got[name], rtol=rtol, atol=atol, elementwise=False) for name in ref}


def fp16_checked(model: ir.Model, *, batch: int = 2, seed: int = 0) -> tuple[ir.Model, dict[str, TensorStats]]:
    """``to_float16`` plus ``fp16_parity`` on seeded random probe inputs of ``batch`` samples;
    ``ParityError`` (exit 3) names the outputs beyond the float16 tolerances."""
    from portanet.errors import ParityError
    from portanet.runtime.session import Session

    half = to_float16(model)
    feeds = Session(model, backend="ort").random_feeds(batch=batch, seed=seed)
    stats = fp16_parity(model, half, feeds)
    bad = [f"{n} (max rel err {s.max_rel:.3g})" for n, s in stats.items() if not s.passed]
    if bad:
        raise ParityError(f"float16 changes output(s) {', '.join(bad)} beyond the float16 tolerance "
                          f"(max err <= {FP16_ATOL:g} + {FP16_RTOL:g} * max|float32 output|)")
    return half, stats
