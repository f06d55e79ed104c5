"""The verification report: per backend, input set and output statistics; bisection and
gradient results; JSON form; the parity certificate stored in the model's metadata."""

from __future__ import annotations

import importlib.metadata
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import onnx_ir as ir

from portanet.errors import ParityError
from portanet.ir.metadata import CERTIFICATE_KEY, set_json
from portanet.parity.bisect import BisectResult
from portanet.parity.compare import TensorStats
from portanet.parity.gradients import GradientReport

#: distributions whose versions go into the certificate, per framework (plus the common ones)
_TOOLS_COMMON = ("onnx", "onnx-ir", "onnxruntime", "numpy")
_TOOLS = {
    "pytorch": ("torch",),
    "keras": ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx"),
    "caffe": ("opencv-python-headless", "opencv-python"),
    "mxnet": (),
    "cntk": (),
    "onnx": (),
}


def tool_versions(framework: str, backends: list[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    from portanet import __version__

    names = list(_TOOLS_COMMON) + list(_TOOLS.get(framework, ()))
    if "torch" in backends and "torch" not in names:
        names.append("torch")
    out = {"portanet": __version__}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    out.update(extra or {})
    return out


@dataclass
class OutputResult:
    backend: str
    inputs: str
    output: str
    stats: TensorStats


def _num(x: float | None) -> float | str | None:
    if x is None:
        return None
    return x if math.isfinite(x) else str(x)


@dataclass
class VerifyReport:
    """What ``verify`` found. ``passed`` is True when every output of every backend at every
    input set is within tolerance (and gradients, with ``train``)."""

    framework: str
    sources: list[dict[str, str]]
    rtol: float
    atol: float
    seed: int
    input_kind: str
    input_shapes: list[dict[str, list[int]]]
    backends: list[str]
    results: list[OutputResult] = field(default_factory=list)
    bisect: BisectResult | None = None
    gradients: GradientReport | None = None
    tools: dict[str, str] = field(default_factory=dict)
    #: backends asked for by default that are not installed (reported, not compared)
    skipped_backends: dict[str, str] = field(default_factory=dict)
    #: why the verdict proves little (degenerate source outputs: constant, uniform, NaN)
    notes: list[str] = field(default_factory=list)
    #: float64 arbitration of failed comparisons (``parity.arbitration.Arbitration``), if any ran
    arbitration: Any = None

    @property
    def arbitrated(self) -> bool:
        """True when strict comparisons failed and float64 arbitration showed them to be rounding."""
        return self.arbitration is not None and self.arbitration.passed and bool(self.failures())

    @property
    def passed(self) -> bool:
        ok = bool(self.results) and (all(r.stats.passed for r in self.results) or self.arbitrated)
        if self.gradients is not None:
            ok = ok and self.gradients.passed
        return ok

    def failures(self) -> list[OutputResult]:
        return [r for r in self.results if not r.stats.passed]

    def summary(self) -> str:
        """One line: what failed and by how much (or that everything passed)."""
        if self.passed:
            text = (f"parity OK: {len(self.results)} comparison(s) across {', '.join(self.backends)} "
                    f"within rtol={self.rtol:g} atol={self.atol:g}")
            if self.arbitrated:
                text = (f"parity OK after float64 arbitration: {len(self.failures())} of {len(self.results)} strict "
                        f"comparison(s) differ by float32 rounding; {self.arbitration.verdict()}")
            if self.notes:
                text += f" — but not informative: {self.notes[0]}"
            return text
        parts = []
        fails = self.failures()
        if fails:
            worst = max(fails, key=lambda r: r.stats.max_abs)
            parts.append(
                f"{len(fails)} of {len(self.results)} output comparison(s) exceed rtol={self.rtol:g} atol={self.atol:g} "
                f"(worst: {worst.backend} output '{worst.output}' on {worst.inputs}: max abs err "
                f"{worst.stats.max_abs:.3g}{', ' + worst.stats.problem if worst.stats.problem else ''})"
            )
        if self.gradients is not None and not self.gradients.passed:
            g = self.gradients
            bad = [k for k, (_, s) in g.params.items() if not s.passed]
            what = f"{len(bad)} parameter gradient(s) differ" if bad else "gradients differ"
            if not g.loss_stats.passed:
                what += f", loss {g.loss_source:.6g} vs {g.loss_ir:.6g}"
            if g.unmatched:
                what += f", {len(g.unmatched)} source parameter(s) not found in the model"
            parts.append(what + (f" (worst: {bad[0]})" if bad else ""))
        if self.arbitration is not None:
            parts.append(f"float64 arbitration: {self.arbitration.verdict()}")
        if self.bisect is not None and self.bisect.found:
            parts.append(f"first divergent layer: '{self.bisect.layer}' ({self.bisect.layer_type})")
        return "parity FAILED: " + "; ".join(parts)

    def raise_on_failure(self) -> None:
        """Raise ``ParityError`` (CLI exit status 3) with the one-line summary if anything failed."""
        if not self.passed:
            raise ParityError(self.summary())

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "framework": self.framework,
            "sources": self.sources,
            "rtol": self.rtol,
            "atol": self.atol,
            "seed": self.seed,
            "inputs": {"kind": self.input_kind, "shapes": self.input_shapes},
            "backends": self.backends,
            "skipped_backends": self.skipped_backends,
            "informative": not self.notes,
            "notes": self.notes,
            "results": [
                {"backend": r.backend, "inputs": r.inputs, "output": r.output,
                 **{k: (_num(v) if isinstance(v, float) else v) for k, v in r.stats.as_dict().items()}}
                for r in self.results
            ],
            "bisect": self.bisect.as_dict() if self.bisect else None,
            "gradients": self.gradients.as_dict() if self.gradients else None,
            "arbitration": self.arbitration.as_dict() if self.arbitration is not None else None,
            "tools": self.tools,
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str)

    def certificate(self) -> dict[str, Any]:
        """The certificate stored under ``portanet.parity``: source hashes, tool versions,
        inputs (seed, shapes), tolerance and per-output errors."""
        outputs: dict[str, dict[str, dict[str, Any]]] = {}
        for r in self.results:
            outputs.setdefault(r.backend, {}).setdefault(r.inputs, {})[r.output] = {
                "max_abs": _num(r.stats.max_abs), "max_rel": _num(r.stats.max_rel),
                "cosine": _num(r.stats.cosine), "top1": r.stats.top1,
            }
        cert: dict[str, Any] = {
            "passed": self.passed,
            "verified_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "framework": self.framework,
            "sources": self.sources,
            "tools": self.tools,
            "inputs": {"kind": self.input_kind, "seed": self.seed, "shapes": self.input_shapes},
            "tolerance": {"rtol": self.rtol, "atol": self.atol},
            "outputs": outputs,
        }
        if self.notes:
            cert["not_informative"] = self.notes
        if self.arbitration is not None:
            cert["arbitration"] = self.arbitration.as_dict()
        if self.gradients is not None:
            g = self.gradients
            worst = g.worst(1)
            cert["gradients"] = {
                "parameters": len(g.params),
                "loss_abs_err": _num(g.loss_stats.max_abs),
                "worst_max_rel": _num(worst[0][2].max_rel) if worst else None,
            }
        return cert

    def write_certificate(self, model: ir.Model) -> None:
        """Store the certificate in ``model``'s metadata (only a passing report certifies)."""
        if not self.passed:
            raise ParityError("refusing to certify a model that failed verification: " + self.summary())
        set_json(model, CERTIFICATE_KEY, self.certificate())


def certificate_summary(cert: Any) -> str | None:
    """One line describing a stored certificate (for ``portanet inspect``), or None."""
    if not isinstance(cert, dict):
        return None
    errs = [o.get("max_abs") for per_inputs in cert.get("outputs", {}).values()
            for per_output in per_inputs.values() for o in per_output.values()]
    worst = max((e for e in errs if isinstance(e, int | float)), default=0.0)
    tol = cert.get("tolerance", {})
    shapes = cert.get("inputs", {}).get("shapes", [])
    grads = cert.get("gradients")
    text = (f"parity certificate: {'passed' if cert.get('passed') else 'FAILED'} against "
            f"{cert.get('framework', '?')} on {', '.join(cert.get('outputs', {})) or 'no backend'}, "
            f"{len(shapes)} input set(s) ({cert.get('inputs', {}).get('kind', '?')}, seed "
            f"{cert.get('inputs', {}).get('seed', '?')}), worst max abs err {worst:.3g} "
            f"(rtol {tol.get('rtol', '?')}, atol {tol.get('atol', '?')})")
    if isinstance(grads, dict):
        text += f", gradients of {grads.get('parameters')} parameters checked"
    arb = cert.get("arbitration")
    if isinstance(arb, dict) and arb.get("verdict"):
        text += f", float64 arbitration: {arb['verdict']}"
    if cert.get("not_informative"):
        text += " (NOT INFORMATIVE: degenerate source outputs)"
    return text + f", {cert.get('verified_at', '')}"
