"""What ``portanet quantize`` measured: a row per precision, the budget's verdict, the fallback."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PrecisionRow:
    """One model (float32 or int8) on the test split."""

    name: str
    accuracy: float | None
    agreement: float | None
    cosine: float
    max_rel: float
    size_bytes: int
    #: batch size -> p50 ONNX Runtime latency (ms); empty when not measured
    latency_ms: dict[int, float] = field(default_factory=dict)


@dataclass
class LayerSensitivity:
    """The cost of quantizing one source layer alone (every other layer float)."""

    layer: str
    layer_type: str
    nodes: list[str]
    #: accuracy points lost (or top-1 disagreement) with only this layer quantized
    drop: float | None
    rel_mse: float
    cosine: float

    def why(self, rank: int, total: int) -> str:
        lost = f"{self.drop:+.2f} points, " if self.drop is not None else ""
        return (f"most sensitive #{rank} of {total}: quantized alone it costs {lost}output error "
                f"{self.rel_mse:.3g} (relative MSE), cosine {self.cosine:.5f}")


@dataclass
class FallbackStep:
    kept_float: int
    drop: float | None


@dataclass
class FallbackReport:
    """Layers measured, the ones kept in float (most sensitive first) and the drop after each step."""

    sensitivities: list[LayerSensitivity] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    steps: list[FallbackStep] = field(default_factory=list)
    met: bool = False

    def kept_layers(self) -> list[tuple[LayerSensitivity, str]]:
        """(layer, why) of every layer kept in float."""
        ranked = {s.layer: i for i, s in enumerate(self.sensitivities, 1)}
        by_name = {s.layer: s for s in self.sensitivities}
        return [(by_name[k], by_name[k].why(ranked[k], len(self.sensitivities))) for k in self.kept]


@dataclass
class QuantizeReport:
    mode: str
    calibration: str | None
    per_channel: bool
    data: dict[str, Any]
    rows: list[PrecisionRow]
    #: what "drop" measures: "accuracy" (labels), "agreement" (top-1 vs float), None (no class output)
    drop_kind: str | None
    #: points lost by the written model (before any fallback: ``naive_drop``)
    drop: float | None
    naive_drop: float | None
    budget: float | None
    fallback: FallbackReport | None = None

    @property
    def budget_met(self) -> bool | None:
        if self.budget is None or self.drop is None:
            return None
        return self.drop <= self.budget + 1e-9

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["budget_met"] = self.budget_met
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2) + "\n"

    def summary(self) -> str:
        q = self.rows[-1]
        what = {"accuracy": "accuracy", "agreement": "top-1 disagreement with float"}.get(self.drop_kind or "", "")
        drop = f", {what} drop {self.drop:.2f} points" if self.drop is not None else ""
        budget = "" if self.budget_met is None else (
            f" (budget {self.budget:g}: {'met' if self.budget_met else 'NOT met'})")
        kept = f"; {len(self.fallback.kept)} layer(s) kept in float" if self.fallback and self.fallback.kept else ""
        return f"{q.name}: cosine {q.cosine:.5f} vs float{drop}{budget}{kept}"


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
