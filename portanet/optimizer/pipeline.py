"""The pass pipeline: levels, fixed-point iteration, per-pass records and the guard."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from portanet.errors import InvalidInputError
from portanet.optimizer._util import initializer_bytes, node_count
from portanet.optimizer.base import OptimizerPass, passes_for
from portanet.optimizer.guard import Guard, OptimizerCheckError, check_signature, signature

log = logging.getLogger(__name__)

#: the optimizer rewrites opset >= 13 forms (axes as inputs, ...); portanet's IR is opset 18
MIN_OPSET = 13


@dataclass(frozen=True)
class ModelStats:
    """Size of a model: node count, initializer bytes and per-op counts."""

    nodes: int
    initializer_bytes: int
    ops: dict[str, int]

    @classmethod
    def of(cls, model: ir.Model) -> ModelStats:
        ops = Counter(n.op_type if not n.domain else f"{n.domain}.{n.op_type}" for n in model.graph)
        return cls(node_count(model.graph), initializer_bytes(model.graph), dict(sorted(ops.items())))


@dataclass(frozen=True)
class PassRecord:
    """One pass run that changed the model."""

    round: int
    name: str
    nodes_before: int
    nodes_after: int
    seconds: float
    max_abs_change: float | None = None
    max_rel_change: float | None = None


@dataclass
class OptimizeResult:
    model: ir.Model
    before: ModelStats
    after: ModelStats
    rounds: int
    records: list[PassRecord] = field(default_factory=list)
    #: change of the final outputs against the original (only with check=True)
    total_change: float | None = None


class Pipeline:
    """Runs passes in order, repeatedly, until none changes the model (or ``max_rounds``).

    ``level``: 0 nothing, 1 trainable clean-up, 2 inference. ``passes`` overrides the level's
    pass list by name (``shape_inference`` is always added: the rewrites read its shapes).
    ``check`` runs the ONNX Runtime guard after every pass that changed
    the model (``feeds`` are the probe inputs; random ones of the declared shapes otherwise).
    """

    def __init__(
        self,
        level: int = 2,
        passes: Sequence[str] | None = None,
        *,
        check: bool = False,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        feeds: Mapping[str, np.ndarray] | None = None,
        max_rounds: int = 10,
    ) -> None:
        if level not in (0, 1, 2):
            raise InvalidInputError(f"optimization level must be 0, 1 or 2, received {level}")
        self.level = level
        self.check = check
        self.rtol = rtol
        self.atol = atol
        self.feeds = feeds
        self.max_rounds = max_rounds
        names = list(passes) if passes is not None else None
        if names and "shape_inference" not in names:
            names.insert(0, "shape_inference")  # it only annotates; the rewrites read its shapes
        classes = passes_for(level, names) if (level or names) else []
        self.passes: list[OptimizerPass] = [cls(level=max(level, 1)) for cls in classes]

    def run(self, model: ir.Model) -> OptimizeResult:
        """Optimize ``model`` in place; returns it with before/after stats and pass records."""
        opset = model.opset_imports.get("", None)
        if self.passes and opset is not None and opset < MIN_OPSET:
            raise InvalidInputError(
                f"the optimizer needs ONNX opset >= {MIN_OPSET}, the model has opset {opset}; "
                "load it with portanet.load (which upgrades to opset 18)"
            )
        # passes read and rewrite weights: bring external-data tensors into memory once
        ir.external_data.load_to_model(model)
        before = ModelStats.of(model)
        result = OptimizeResult(model, before, before, 0)
        if not self.passes:
            return result
        guard = Guard(model, rtol=self.rtol, atol=self.atol, feeds=self.feeds) if self.check else None
        # an untouched copy, to compare a second batch size at the end
        original = ir.serde.deserialize_model(ir.serde.serialize_model(model)) if self.check else None
        sig = signature(model)
        for round_ in range(1, self.max_rounds + 1):
            result.rounds = round_
            changed = False
            for pass_ in self.passes:
                n0 = node_count(model.graph)
                t0 = time.perf_counter()
                modified = pass_(model).modified
                dt = time.perf_counter() - t0
                if not modified:
                    continue
                check_signature(sig, model, pass_.name, allow_input_removal=True)
                sig = signature(model)
                if pass_.analysis:
                    continue
                change = guard.check(model, pass_.name) if guard is not None else None
                n1 = node_count(model.graph)
                changed = True
                result.records.append(PassRecord(
                    round_, pass_.name, n0, n1, dt,
                    None if change is None else change.max_abs,
                    None if change is None else change.max_rel,
                ))
                log.info("round %d %-22s nodes %d -> %d%s", round_, pass_.name, n0, n1,
                         "" if change is None else f"  max change {change.max_abs:.3g}")
            if not changed:
                break
        else:
            log.warning("optimizer stopped after %d rounds without reaching a fixed point", self.max_rounds)
        if guard is not None:
            result.total_change = guard.total().max_abs
            self._check_other_batch(guard, original, model)
        result.after = ModelStats.of(model)
        return result

    def _check_other_batch(self, guard: Guard, original: ir.Model, model: ir.Model) -> None:
        """A second probe with another batch size catches passes that baked the batch in."""
        if self.feeds is not None or not guard.feeds:
            return
        from portanet.optimizer.guard import probe_feeds, run_ort

        feeds = probe_feeds(original, batch=3, seed=1)
        if all(f.shape == guard.feeds[k].shape for k, f in feeds.items() if k in guard.feeds):
            return  # no symbolic dims: nothing new to learn
        ok, change = guard._within(run_ort(original, feeds), run_ort(model, feeds))
        if not ok:
            raise OptimizerCheckError(
                f"optimized model differs from the original at batch 3 on output '{change.output}' "
                f"by {change.max_abs:.3g}"
            )


def optimize(
    model: ir.Model,
    level: int = 2,
    passes: Sequence[str] | None = None,
    check: bool = False,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    feeds: Mapping[str, np.ndarray] | None = None,
    max_rounds: int = 10,
) -> ir.Model:
    """Optimize ``model`` in place and return it.

    ``level`` 0 returns the model unchanged, 1 runs the clean-up passes that keep it
    trainable, 2 adds the inference-only folds (BatchNorm, Dropout, constant Mul/Add into
    weights). ``passes`` (names) replaces the level's list. ``check=True`` verifies every
    pass with ONNX Runtime on probe inputs and raises ``OptimizerCheckError`` naming a pass
    that moved an output beyond ``atol + rtol * scale``.
    """
    return optimize_with_report(model, level, passes, check, rtol=rtol, atol=atol, feeds=feeds,
                                max_rounds=max_rounds).model


def optimize_with_report(
    model: ir.Model,
    level: int = 2,
    passes: Sequence[str] | None = None,
    check: bool = False,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    feeds: Mapping[str, np.ndarray] | None = None,
    max_rounds: int = 10,
) -> OptimizeResult:
    """Like :func:`optimize`, returning an :class:`OptimizeResult` with stats and pass records."""
    pipeline = Pipeline(level, passes, check=check, rtol=rtol, atol=atol, feeds=feeds, max_rounds=max_rounds)
    return pipeline.run(model)
