"""Float64 arbitration: is a failed strict comparison float32 rounding, or a conversion error?

Deep networks computed in float32 by two different runtimes disagree by accumulated
rounding (different summation orders, fused kernels). Where a strict elementwise comparison
fails by a margin rounding can explain (same top-1, scale-relative error below
``MAX_ROUNDING_REL``), ``arbitrate`` recomputes in float64:

* the converted graph on the torch backend, with every float32 tensor widened to float64;
* the source itself in float64 where its framework can (MXNet, PyTorch).

The exact reference is the source in float64 when it ran, else the converted graph in
float64. The conversion passes arbitration when

1. (source in float64 ran) the converted graph in float64 matches the source in float64
   to ``SEMANTIC_REL`` of the output's scale — the two compute the same function, so no
   weight or attribute was lost in conversion;
2. every backend's float32 output is within the verification tolerance of the exact
   reference (scale-relative: ``max|got - exact| <= atol + rtol * max|exact|``); and
3. (source not run in float64) the source's own float32 output is no further than
   ``RATIO`` times the conversion's distance from the exact reference: both sides are
   rounding, and a conversion error (which the float64 graph would carry too) would make
   the source look far away.

A planted error shows up in (1) or (3) and keeps the verdict failed (and bisected).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import PortanetError
from portanet.parity.compare import TensorStats

log = logging.getLogger(__name__)

#: failing comparisons further apart than this (relative to the output's scale) are not rounding
MAX_ROUNDING_REL = 1e-3
#: float64 graph vs float64 source: relative to the output's scale (float64 rounding is ~1e-16)
SEMANTIC_REL = 1e-7
#: without a float64 source: how much further from exact the source may be than the conversion
RATIO = 10.0


@dataclass
class OutputArbitration:
    backend: str
    inputs: str
    output: str
    #: max |converted (float32) - exact|
    conversion_err: float
    #: max |source (float32) - exact|
    source_err: float
    #: max |exact|
    scale: float
    passed: bool


@dataclass
class Arbitration:
    """The float64 arbitration of a report's failed comparisons."""

    #: "source-float64" or "graph-float64" (the source's framework cannot run in float64)
    reference: str
    passed: bool
    outputs: list[OutputArbitration] = field(default_factory=list)
    #: max |graph float64 - source float64| / scale (None when the source did not run in float64)
    graph_vs_source: float | None = None
    #: why the arbitration failed (empty when it passed)
    reason: str = ""

    @property
    def conversion_err(self) -> float:
        return max((o.conversion_err for o in self.outputs), default=0.0)

    @property
    def source_err(self) -> float:
        return max((o.source_err for o in self.outputs), default=0.0)

    def verdict(self) -> str:
        """One line, e.g. 'pass: conversion within 3e-06 of float64; the source itself is 7e-05 away'."""
        exact = "the source in float64" if self.reference == "source-float64" else "the converted graph in float64"
        if self.passed:
            return (f"pass: conversion within {self.conversion_err:.2g} of float64; the source itself is "
                    f"{self.source_err:.2g} away (reference: {exact})")
        return f"fail: {self.reason} (reference: {exact})"

    def as_dict(self) -> dict[str, Any]:
        def num(x: float | None) -> float | str | None:
            return x if x is None or math.isfinite(x) else str(x)

        return {
            "passed": self.passed,
            "verdict": self.verdict(),
            "reference": self.reference,
            "graph_vs_source_rel": num(self.graph_vs_source),
            "conversion_err": num(self.conversion_err),
            "source_err": num(self.source_err),
            "outputs": [{k: (num(v) if isinstance(v, float) else v) for k, v in asdict(o).items()}
                        for o in self.outputs],
        }


def explainable_by_rounding(stats: TensorStats) -> bool:
    """A failed comparison float32 rounding could explain: same shape, finite, same top-1, small error."""
    if stats.problem or not math.isfinite(stats.max_rel):
        return False
    if stats.top1 is not None and stats.top1 < 1.0:
        return False
    return stats.max_rel <= MAX_ROUNDING_REL


# ----------------------------------------------------------------------- float64 graph
def to_float64(model: ir.Model) -> ir.Model:
    """A copy of ``model`` computing in float64: float32 initializers, inputs, outputs,
    intermediate values, Cast targets and constant attributes are widened."""
    m = ir.serde.deserialize_model(ir.serde.serialize_model(model))
    f32, f64 = ir.DataType.FLOAT, ir.DataType.DOUBLE
    for v in m.graph.initializers.values():
        if v.dtype == f32 and v.const_value is not None:
            v.const_value = ir.tensor(v.const_value.numpy().astype(np.float64), name=v.name)
            v.dtype = f64
    values = [*m.graph.inputs, *m.graph.outputs]
    for node in ir.traversal.RecursiveGraphIterator(m.graph):
        values.extend(node.outputs)
        for name, attr in list(node.attributes.items()):
            if node.op_type in ("Cast", "RandomNormal", "RandomUniform", "EyeLike") and name in ("to", "dtype") \
                    and attr.value == int(f32):
                node.attributes[name] = ir.AttrInt64(name, int(f64))
            elif attr.type == ir.AttributeType.TENSOR and attr.value.dtype == f32:
                node.attributes[name] = ir.AttrTensor(name, ir.tensor(attr.value.numpy().astype(np.float64)))
    for v in values:
        if v.dtype == f32:
            v.dtype = f64
    return m


def _widen(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: (np.asarray(a, dtype=np.float64) if np.asarray(a).dtype == np.float32 else np.asarray(a))
            for k, a in feeds.items()}


def run_graph_float64(model64: ir.Model, feeds: Mapping[str, np.ndarray], device: str = "cpu") -> dict[str, np.ndarray]:
    """Run a ``to_float64`` model on the torch backend."""
    from portanet.runtime.session import Session

    return Session(model64, backend="torch", device=device).run(_widen(feeds))


# ---------------------------------------------------------------------- float64 source
def _mxnet_float64(sources: Any, feeds: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from portanet.parity.reference import run_reference

    outs, _ = run_reference("mxnet", sources, _widen(feeds), output_names=options["output_names"],
                            options={**options, "float64": True})
    return outs


def _pytorch_float64(sources: Any, feeds: Mapping[str, np.ndarray], options: Mapping[str, Any]) -> dict[str, np.ndarray]:
    import torch

    from portanet.parity.runners.pytorch import load_module, run_module

    module = sources if isinstance(sources, torch.nn.Module) else load_module(sources, options)
    module64 = copy.deepcopy(module).double()
    return run_module(module64, _widen(feeds), output_names=options["output_names"])


#: framework -> runs the source in float64 (frameworks that cannot are absent)
SOURCE_FLOAT64: dict[str, Callable[[Any, Mapping[str, np.ndarray], Mapping[str, Any]], dict[str, np.ndarray]]] = {
    "mxnet": _mxnet_float64,
    "pytorch": _pytorch_float64,
}


# ------------------------------------------------------------------------- arbitration
@dataclass
class FailedCase:
    """One backend's run on one input set whose strict comparison failed."""

    backend: str
    inputs: str
    feeds: Mapping[str, np.ndarray]
    #: the source's float32 outputs and the backend's, by output name
    ref: Mapping[str, np.ndarray]
    got: Mapping[str, np.ndarray]
    #: names of the outputs that failed
    outputs: Sequence[str]


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    return float(np.max(np.abs(a64 - b64))) if a64.size else 0.0


def arbitrate(
    framework: str,
    sources: Any,
    model: ir.Model,
    cases: Sequence[FailedCase],
    options: Mapping[str, Any],
    *,
    rtol: float,
    atol: float,
    device: str = "cpu",
) -> Arbitration | None:
    """Arbitrate ``cases`` in float64 (see the module docstring); None if float64 cannot run here."""
    try:
        model64 = to_float64(model)
    except Exception as exc:  # noqa: BLE001 - a model the widening cannot handle: no arbitration
        log.info("no float64 arbitration: cannot widen the model (%s)", exc)
        return None
    src64_fn = SOURCE_FLOAT64.get(framework)
    result: Arbitration | None = None
    by_feeds: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]] = {}
    for case in cases:
        if case.inputs not in by_feeds:
            try:
                graph64 = run_graph_float64(model64, case.feeds, device=device)
            except PortanetError as exc:
                log.info("no float64 arbitration: the torch backend cannot run the model (%s)", exc)
                return None
            src64 = None
            if src64_fn is not None:
                try:
                    src64 = src64_fn(sources, case.feeds, options)
                except Exception as exc:  # noqa: BLE001 - fall back to the float64 graph as reference
                    log.info("the %s source cannot run in float64 here (%s); using the float64 graph", framework, exc)
            by_feeds[case.inputs] = (graph64, src64)
        graph64, src64 = by_feeds[case.inputs]
        if result is None:
            result = Arbitration(reference="source-float64" if src64 is not None else "graph-float64", passed=True)
        for name in case.outputs:
            exact = np.asarray(src64[name] if src64 is not None else graph64[name], np.float64)
            scale = float(np.max(np.abs(exact))) if exact.size else 0.0
            if src64 is not None:
                rel = _max_abs(graph64[name], exact) / scale if scale > 0 else _max_abs(graph64[name], exact)
                result.graph_vs_source = max(result.graph_vs_source or 0.0, rel)
                if rel > SEMANTIC_REL and result.passed:
                    result.passed = False
                    result.reason = (f"the converted graph in float64 differs from the source in float64 by "
                                     f"{rel:.2g} of the output scale on '{name}': a conversion error, not rounding")
            conv = _max_abs(case.got[name], exact)
            src = _max_abs(case.ref[name], exact)
            ok = conv <= atol + rtol * scale
            if ok and src64 is None and src > RATIO * max(conv, atol):
                ok = False
                if result.passed:
                    result.reason = (f"the source is {src:.2g} from the float64 graph on '{name}', {src / max(conv, atol):.1f}x "
                                     f"the conversion's {conv:.2g}: more than rounding")
            elif not ok and result.passed:
                result.reason = (f"{case.backend} output '{name}' is {conv:.2g} from float64, beyond "
                                 f"atol={atol:g} + rtol={rtol:g} x {scale:.3g}")
            result.outputs.append(OutputArbitration(case.backend, case.inputs, name, conv, src, scale, ok))
            result.passed = result.passed and ok
    return result


def maybe_arbitrate(
    failures: Sequence[Any],
    framework: str,
    sources: Any,
    model: ir.Model,
    cases: Sequence[FailedCase],
    options: Mapping[str, Any],
    *,
    rtol: float,
    atol: float,
    device: str = "cpu",
) -> Arbitration | None:
    """Arbitrate when every failed comparison (``OutputResult``s) could be rounding; else None."""
    if not failures or not cases or not all(explainable_by_rounding(r.stats) for r in failures):
        return None
    result = arbitrate(framework, sources, model, cases, options, rtol=rtol, atol=atol, device=device)
    if result is not None:
        log.info("float64 arbitration: %s", result.verdict())
    return result
