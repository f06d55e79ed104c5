"""The pass base class and the pass registry.

Every pass is an ``onnx_ir.passes.InPlacePass``: ``pass_(model)`` rewrites the model in
place and returns ``PassResult(model, modified)``. A pass declares

* ``name``  - the name used by ``--passes`` and in reports,
* ``level`` - the lowest optimization level that runs it (1: keeps the model trainable,
  2: inference only),
* ``order`` - its position in the pipeline.

Passes that are registered for level 1 receive the level they run at, and must not rewrite
trainable parameters (float initializers) at level 1: folding a parameter into another one
or deleting a multiplication by a parameter that happens to be 1 changes what training does.
"""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir

from portanet.errors import InvalidInputError

#: name -> pass class, filled by @register_pass
PASSES: dict[str, type[OptimizerPass]] = {}


class OptimizerPass(ir.passes.InPlacePass):
    """Base of portanet's passes: ``call`` delegates to ``run(graph) -> modified``."""

    name: ClassVar[str] = ""
    level: ClassVar[int] = 1
    order: ClassVar[int] = 100
    #: analysis passes (shape inference) annotate but do not count toward the fixed point
    analysis: ClassVar[bool] = False

    def __init__(self, level: int = 2) -> None:
        super().__init__()
        self.opt_level = level

    def may_rewrite(self, value: ir.Value | None) -> bool:
        """Whether the pass may fold/alter the constant ``value`` at the current level."""
        from portanet.optimizer._util import is_param

        return self.opt_level >= 2 or not is_param(value)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = bool(self.run(model.graph))
        return ir.passes.PassResult(model, modified)

    def run(self, graph: ir.Graph) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.opt_level})"


def register_pass(cls: type[OptimizerPass]) -> type[OptimizerPass]:
    """Class decorator adding a pass to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    PASSES[cls.name] = cls
    return cls


def passes_for(level: int, names: list[str] | None = None) -> list[type[OptimizerPass]]:
    """The pass classes run at ``level`` (or exactly ``names``), in pipeline order."""
    _load_all()
    if names is not None:
        unknown = [n for n in names if n not in PASSES]
        if unknown:
            raise InvalidInputError(
                f"unknown optimizer pass(es) {', '.join(unknown)}; known: {', '.join(sorted(PASSES))}"
            )
        chosen = [PASSES[n] for n in names]
    else:
        chosen = [p for p in PASSES.values() if 0 < p.level <= level]
    return sorted(chosen, key=lambda p: p.order)


def _load_all() -> None:
    """Import every pass module so their @register_pass decorators run."""
    from portanet.optimizer import (  # noqa: F401
        affine_folding,
        batchnorm_folding,
        concat_fusion,
        constant_folding,
        cse,
        gemm_fusion,
        gemm_input,
        identity_elimination,
        initializer_dedup,
        input_affine_folding,
        pad_folding,
        reshape_collapse,
        shape_inference,
        transpose_push,
        unused_removal,
    )
