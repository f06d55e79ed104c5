"""Conversion context shared by the CNTK op handlers.

Every converted tensor is a ``T``: the IR value, its *sample* shape in NumPy order (CNTK's
column-major dims reversed) and whether it carries the batch axis in front. CNTK keeps batch
and sequence axes outside the shape; portanet folds them into one leading batch axis ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.cntk.graph import Function
from portanet.converters.cntk.reader import INT_MAX, Axis, NDShape
from portanet.converters.handlers import HandlerTable
from portanet.errors import ConversionError
from portanet.ir.builder import GraphBuilder

HANDLERS = HandlerTable("cntk")


@dataclass
class T:
    """A converted tensor: IR value, sample shape (NumPy order) and batch flag."""

    value: ir.Value
    shape: tuple[int, ...]
    batched: bool
    #: the constant's array when this tensor is a Parameter/Constant (enables folding)
    array: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def full_shape(self) -> tuple[int | str, ...]:
        return (("N",) if self.batched else ()) + self.shape

    def axis(self, sample_axis: int) -> int:
        """IR axis of a NumPy-order sample axis."""
        return sample_axis + (1 if self.batched else 0)


class Ctx:
    """Builder plus helpers for the handlers of one conversion."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder

    # -- emitting ---------------------------------------------------------------------
    def op(self, f: Function, op_type: str, inputs: list[ir.Value | None], attrs: dict[str, Any] | None = None,
           *, final: bool = False) -> ir.Value:
        """Emit a node; the ``final`` node of a function gets its CNTK output name."""
        if final:
            return self.b.op(op_type, inputs, attrs, outputs=[f.output])
        return self.b.op(op_type, inputs, attrs)

    def const(self, array: Any, dtype: Any = None) -> ir.Value:
        return self.b.const(array, dtype=dtype)

    def i64(self, values: Any) -> ir.Value:
        return self.b.const(np.asarray(values, dtype=np.int64), name="shape")

    def reshape(self, f: Function, x: T, shape: tuple[int, ...], *, final: bool = False) -> T:
        """Reshape the sample of ``x`` to ``shape`` (the batch axis is kept)."""
        target = ([0] if x.batched else []) + list(shape)
        v = self.op(f, "Reshape", [x.value, self.i64(target)], final=final)
        return T(v, tuple(shape), x.batched)


# -- attribute helpers -------------------------------------------------------------------
def attr(f: Function, name: str, default: Any = None) -> Any:
    return f.attributes.get(name, default)


def shape_attr(f: Function, name: str, default: tuple[int, ...] = ()) -> list[int]:
    """An NDShape (or vector of ints) attribute, in CNTK order."""
    v = f.attributes.get(name)
    if v is None:
        return list(default)
    if isinstance(v, NDShape):
        return [int(d) if d is not None else -1 for d in v.dims]
    if isinstance(v, list):
        return [int(x) for x in v]
    return [int(v)]


def bool_vec(f: Function, name: str, default: bool) -> list[bool]:
    v = f.attributes.get(name)
    if v is None:
        return [default]
    if isinstance(v, list):
        return [bool(x) for x in v]
    return [bool(v)]


def fix_vector(values: list[Any], filter_rank: int, input_rank: int, fill: Any) -> list[Any]:
    """CNTK's FixVectorShape: repeat the last value up to the kernel rank, then fill up to
    the input rank (an empty vector means "all defaults")."""
    out = list(values) if values else [fill]
    while len(out) < filter_rank:
        out.append(out[-1])
    while len(out) < input_rank:
        out.append(fill)
    return out[:input_rank]


def static_axis(f: Function, axis: Any, rank: int, *, allow_new: bool = False) -> int:
    """Normalize a CNTK static Axis (CNTK order, maybe negative) to a CNTK index in [0, rank)."""
    if not isinstance(axis, Axis):
        raise ConversionError(f"expected an Axis attribute, received {type(axis).__name__}")
    if not axis.is_static:
        raise ConversionError(
            f"axis '{axis.name or axis.static_axis_idx}' is a dynamic (batch/sequence) axis; only static axes are supported"
        )
    idx = axis.static_axis_idx
    if idx < 0:
        idx += rank
    hi = rank + (1 if allow_new else 0)
    if not 0 <= idx < hi:
        raise ConversionError(f"axis {axis.static_axis_idx} is out of range for a rank-{rank} operand")
    return idx


def numpy_axis(cntk_idx: int, rank: int) -> int:
    """CNTK static axis index -> NumPy sample axis (CNTK dims are reversed)."""
    return rank - 1 - cntk_idx


def is_all_static(axis: Any) -> bool:
    return isinstance(axis, Axis) and axis.static_axis_idx == INT_MAX - 1


def is_all_axes(axis: Any) -> bool:
    return isinstance(axis, Axis) and axis.static_axis_idx == INT_MAX - 4
