"""The ``--check`` guard: run probe inputs through ONNX Runtime around every pass.

The guard runs the model with ONNX Runtime's own graph optimizations disabled (so it checks
the graph the pass wrote, not what ORT makes of it), compares every output with the result
before the pass, and raises ``OptimizerCheckError`` naming the pass when an output moved
beyond ``atol + rtol * scale`` (``scale`` = the output's largest magnitude). It also checks
that the model's interface survived: input names, dtypes and dims (symbolic batch included),
output names and ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from portanet.errors import ParityError, RuntimeBackendError

log = logging.getLogger(__name__)


class OptimizerCheckError(ParityError):
    """An optimizer pass changed the model's outputs or interface (a bug in that pass)."""


@dataclass(frozen=True)
class Change:
    """Largest output change of one check: absolute and relative to the output's scale."""

    max_abs: float
    max_rel: float
    output: str


def _dim(d: object) -> int | str | None:
    return d if isinstance(d, int) else getattr(d, "value", None)


def signature(model: ir.Model) -> tuple[list[tuple], list[tuple]]:
    """(inputs, outputs) as plain tuples: names, dtypes, dims (symbolic dims by name)."""
    inits = set(model.graph.initializers)
    ins = [
        (v.name, v.dtype, None if v.shape is None else tuple(_dim(d) for d in v.shape))
        for v in model.graph.inputs
        if v.name not in inits
    ]
    outs = [(v.name, v.dtype, None if v.shape is None else tuple(_dim(d) for d in v.shape)) for v in model.graph.outputs]
    return ins, outs


def check_signature(before: tuple[list[tuple], list[tuple]], model: ir.Model, pass_name: str,
                    *, allow_input_removal: bool = False) -> None:
    """Raise OptimizerCheckError if ``pass_name`` changed the model's inputs or outputs."""
    ins, outs = signature(model)
    b_ins, b_outs = before
    if allow_input_removal:
        kept = {i[0] for i in ins}
        b_ins = [i for i in b_ins if i[0] in kept]
    if ins != b_ins:
        raise OptimizerCheckError(f"optimizer pass '{pass_name}' changed the model inputs: expected {b_ins}, received {ins}")
    if [o[0] for o in outs] != [o[0] for o in b_outs]:
        raise OptimizerCheckError(
            f"optimizer pass '{pass_name}' changed the output names: expected {[o[0] for o in b_outs]}, "
            f"received {[o[0] for o in outs]}"
        )
    for (name, _, dims), (_, _, b_dims) in zip(outs, b_outs):
        if dims is None or b_dims is None:
            continue
        if len(dims) != len(b_dims):
            raise OptimizerCheckError(
                f"optimizer pass '{pass_name}' changed the rank of output '{name}': expected {list(b_dims)}, "
                f"received {list(dims)}"
            )
        for bd, d in zip(b_dims, dims):
            if isinstance(bd, str) and isinstance(d, int):
                raise OptimizerCheckError(
                    f"optimizer pass '{pass_name}' pinned the symbolic dim '{bd}' of output '{name}' to {d}"
                )


def probe_feeds(model: ir.Model, *, batch: int = 2, other_dims: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input: the first symbolic dim -> ``batch``, other
    symbolic dims -> ``other_dims``."""
    rng = np.random.default_rng(seed)
    inits = set(model.graph.initializers)
    feeds: dict[str, np.ndarray] = {}
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        if v.shape is None:
            raise RuntimeBackendError(f"cannot make a probe input for '{v.name}': its shape is unknown; pass probe feeds")
        shape = tuple(d if isinstance(d, int) else (batch if i == 0 else other_dims) for i, d in enumerate(v.shape))
        dtype = np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(np.float32)
        if dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[v.name] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[v.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def run_ort(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` on ``feeds`` with ONNX Runtime (its graph optimizations off)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        return sess.run(None, {k: v for k, v in feeds.items() if k in names})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeBackendError(f"ONNX Runtime cannot run the model for the optimizer check: {msg}") from exc


def compare(before: list[np.ndarray], after: list[np.ndarray], names: list[str]) -> Change:
    """The largest change over all outputs (absolute, and relative to max(|before|, 1e-12))."""
    worst = Change(0.0, 0.0, "")
    for name, a, b in zip(names, before, after):
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            return Change(float("inf"), float("inf"), f"{name} (shape {list(a.shape)} -> {list(b.shape)})")
        if a.size == 0:
            continue
        if a.dtype.kind not in "fc":
            diff = float(np.max(a != b))
            scale = 1.0
        else:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
            diff = float(np.max(np.where(same, 0.0, np.abs(a64 - b64))))
            finite = np.abs(a64[np.isfinite(a64)])
            scale = float(finite.max()) if finite.size else 1.0
        rel = diff / max(scale, 1e-12)
        if diff > worst.max_abs or worst.output == "":
            worst = Change(diff, rel, name)
    return worst


class Guard:
    """Runs probe feeds before/after each pass and raises when outputs move too far."""

    def __init__(self, model: ir.Model, *, rtol: float = 1e-4, atol: float = 1e-5,
                 feeds: Mapping[str, np.ndarray] | None = None) -> None:
        self.rtol = rtol
        self.atol = atol
        self.feeds = dict(feeds) if feeds is not None else probe_feeds(model)
        self.names = [v.name or "" for v in model.graph.outputs]
        self.reference = run_ort(model, self.feeds)
        self.previous = self.reference

    def _within(self, before: list[np.ndarray], after: list[np.ndarray]) -> tuple[bool, Change]:
        change = compare(before, after, self.names)
        ok = True
        for a, b in zip(before, after):
            a = np.asarray(a)
            b = np.asarray(b)
            if a.shape != b.shape:
                return False, change
            if a.size == 0:
                continue
            if a.dtype.kind not in "fc":
                ok &= bool(np.array_equal(a, b))
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
            finite = np.abs(a64[np.isfinite(a64)])
            scale = float(finite.max()) if finite.size else 0.0
            diff = np.where(same, 0.0, np.abs(a64 - b64))
            ok &= bool(np.all(diff <= self.atol + self.rtol * scale))
        return ok, change

    def check(self, model: ir.Model, pass_name: str) -> Change:
        """Run ``model``; raise OptimizerCheckError naming ``pass_name`` if outputs moved."""
        try:
            outs = run_ort(model, self.feeds)
        except RuntimeBackendError as exc:
            raise OptimizerCheckError(f"optimizer pass '{pass_name}' broke the model: {exc}") from exc
        ok, change = self._within(self.previous, outs)
        if not ok:
            raise OptimizerCheckError(
                f"optimizer pass '{pass_name}' changed output '{change.output}' by {change.max_abs:.3g} "
                f"({change.max_rel:.3g} of its scale); tolerance atol={self.atol:g} + rtol={self.rtol:g} x scale"
            )
        self.previous = outs
        return change

    def total(self) -> Change:
        """Change of the last checked model against the original."""
        return compare(self.reference, self.previous, self.names)
