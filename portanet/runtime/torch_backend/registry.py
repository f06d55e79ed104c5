"""The op table of the torch backend: ONNX op type -> lowering function.

A lowering function receives the lowering context, the IR node and one reference per
node input (``None`` for an omitted optional input) and returns one reference per node
output. A reference is either an ``torch.fx.Node`` (a value known only at run time) or a
constant (a CPU ``torch.Tensor`` folded at lowering time). Lowering functions emit torch
calls through ``ctx.call`` which folds calls whose arguments are all constants, so shape
arithmetic (``Shape -> Gather -> Concat -> Reshape``) costs nothing at run time when the
shapes are static.

    @register("Relu")
    def relu(ctx, node, x):
        return ctx.call(torch.relu, x)

``static_inputs`` lists input positions that configure the op rather than carry data
(Resize scales, Clip bounds, Pad value, ...): a float initializer consumed only at such
positions is a constant, not a trainable parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Lowering = Callable[..., Any]


@dataclass(frozen=True)
class OpEntry:
    fn: Lowering
    static_inputs: frozenset[int] = field(default_factory=frozenset)
    #: input positions holding BatchNormalization-style running statistics (-> buffers)
    buffer_inputs: frozenset[int] = field(default_factory=frozenset)


_OPS: dict[str, OpEntry] = {}


def register(
    *op_types: str, static_inputs: tuple[int, ...] = (), buffer_inputs: tuple[int, ...] = ()
) -> Callable[[Lowering], Lowering]:
    """Decorator: ``fn`` lowers the ONNX (default domain) ops ``op_types``."""

    def deco(fn: Lowering) -> Lowering:
        for t in op_types:
            if t in _OPS:
                raise RuntimeError(f"duplicate torch lowering for {t}")
            _OPS[t] = OpEntry(fn, frozenset(static_inputs), frozenset(buffer_inputs))
        return fn

    return deco


def lookup(op_type: str) -> OpEntry | None:
    _load_ops()
    return _OPS.get(op_type)


def supported_ops() -> list[str]:
    """Every ONNX op type the torch backend can lower."""
    _load_ops()
    return sorted(_OPS)


_loaded = False


def _load_ops() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from portanet.runtime.torch_backend import ops

    for info in pkgutil.iter_modules(ops.__path__):
        importlib.import_module(f"{ops.__name__}.{info.name}")
