"""Sensitivity-guided fallback: keep the source layers that int8 hurts most in float.

1. Candidates are the source layers (provenance) holding a weight op (Conv, ConvTranspose,
   Gemm, MatMul): the layers int8 changes most directly.
2. Sensitivity of a layer = the effect of quantizing *that layer alone* (every other layer
   float, activation ranges from the one calibration): the relative output error
   ``||q - f||^2 / ||f||^2`` against the float model on the evaluation samples, and the
   accuracy points lost. Layers are ranked by output error (accuracy alone is too coarse:
   most layers lose 0 points on their own).
3. Starting from the fully quantized model, the most sensitive layers are excluded from
   quantization one more at a time until the drop is within the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx_ir as ir

from portanet.ir.provenance import source_of
from portanet.quantize.evaluate import Metrics, accuracy_drop
from portanet.quantize.report import FallbackReport, FallbackStep, LayerSensitivity

log = logging.getLogger(__name__)

#: ops whose weights int8 quantizes: a source layer with one of them is a fallback candidate
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass
class Layer:
    name: str
    layer_type: str
    nodes: list[str]


def candidate_layers(model: ir.Model) -> list[Layer]:
    """Source layers with a weight op, in graph order, with the names of all their nodes."""
    layers: dict[str, Layer] = {}
    weighted: set[str] = set()
    for node in model.graph:
        src = source_of(node)
        name, typ = src if src is not None else (node.name or "", node.op_type)
        layers.setdefault(name, Layer(name, typ, [])).nodes.append(node.name or "")
        if node.op_type in WEIGHT_OPS:
            weighted.add(name)
    return [layer for name, layer in layers.items() if name in weighted]


#: (include node names, exclude node names) -> Metrics of the model quantized that way
Trial = Callable[[Sequence[str], Sequence[str]], Metrics]


def measure_sensitivity(layers: Sequence[Layer], trial: Trial, float_metrics: Metrics) -> list[LayerSensitivity]:
    """Quantize each layer alone; most sensitive (largest output error) first."""
    out = []
    for layer in layers:
        m = trial(layer.nodes, ())
        out.append(LayerSensitivity(layer.name, layer.layer_type, layer.nodes, accuracy_drop(float_metrics, m),
                                    m.rel_mse, m.cosine))
        log.info("sensitivity of %s: %.3g", layer.name, m.rel_mse)
    return sorted(out, key=lambda s: (-(s.rel_mse), -(s.drop or 0.0)))


def fallback(
    layers: Sequence[Layer],
    trial: Trial,
    float_metrics: Metrics,
    budget: float,
    *,
    sensitivity_trial: Trial | None = None,
) -> tuple[FallbackReport, list[str]]:
    """Keep the most sensitive layers in float until ``trial`` (the full evaluation) is within
    ``budget`` points. Returns the report and the node names to exclude from quantization."""
    report = FallbackReport(measure_sensitivity(layers, sensitivity_trial or trial, float_metrics))
    excluded: list[str] = []
    for s in report.sensitivities:
        excluded.extend(s.nodes)
        report.kept.append(s.layer)
        drop = accuracy_drop(float_metrics, trial((), excluded))
        report.steps.append(FallbackStep(len(report.kept), drop))
        log.info("keeping %d layer(s) in float: drop %s", len(report.kept), drop)
        if drop is not None and drop <= budget + 1e-9:
            report.met = True
            break
    return report, excluded
