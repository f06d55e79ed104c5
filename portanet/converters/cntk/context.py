"""Conversion context shared by the CNTK op handlers.

Every converted tensor is a ``T``: the IR value, its *sample* shape in NumPy order (CNTK's
column-major dims reversed) and which dynamic axes it carries in front. CNTK keeps the batch
and sequence axes outside the shape; portanet puts them in front of the sample, batch first:

    no dynamic axis (Parameter, Constant)        (sample...)
    batch axis only (an Input without sequence)  (N, sample...)
    batch and sequence axes                      (N, T, sample...)

so a sequence input is an ONNX input (N, T, features...) with a symbolic time axis ``T``; the
sequence is never folded into the batch. Inside a recurrent loop (an ONNX Scan body, see
``loops.py``) one time step of a sequence is a batch-only tensor (N, sample...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.cntk.graph import CntkGraph, Function
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
    #: True when the sequence (time) axis follows the batch axis: (N, T, sample...)
    seq: bool = False
    #: set on the output of ``Where``: the value is an int64 vector of time indices (K,)
    time_index: bool = False

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def lead(self) -> int:
        """Number of dynamic axes in front of the sample (0, 1 or 2)."""
        return (1 if self.batched else 0) + (1 if self.seq else 0)

    @property
    def full_shape(self) -> tuple[int | str, ...]:
        return (("N",) if self.batched else ()) + (("T",) if self.seq else ()) + self.shape

    def axis(self, sample_axis: int) -> int:
        """IR axis of a NumPy-order sample axis."""
        return sample_axis + self.lead

    def like(self, value: ir.Value, shape: tuple[int, ...]) -> T:
        """A new tensor with this one's dynamic axes."""
        return T(value, tuple(shape), self.batched, seq=self.seq)


def dynamic_of(f: Function, *ts: T) -> T:
    """The operand whose dynamic axes a combination of ``ts`` carries (CNTK broadcasts
    tensors without dynamic axes over the others); operands with batch axes must agree."""
    dyn = [t for t in ts if t.batched]
    if not dyn:
        return ts[0]
    if any(t.seq != dyn[0].seq for t in dyn):
        raise ConversionError("combining a sequence with a non-sequence batched operand is not supported "
                              "(CNTK needs sequence.broadcast_as for that)")
    return dyn[0]


class Ctx:
    """Builder plus helpers for the handlers of one conversion."""

    def __init__(self, builder: GraphBuilder, graph: CntkGraph | None = None) -> None:
        self.b = builder
        #: the whole CNTK graph (handlers that look at their operands' producers use it)
        self.graph = graph

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

    def fold_time(self, f: Function, x: T) -> tuple[ir.Value, ir.Value | None]:
        """For ops that need (N, C, ...) (convolution, pooling, spatial batch norm): a sequence
        (N, T, sample...) folded to (N*T, sample...), and its (N, T) dims to unfold with
        ``unfold_time``; other tensors unchanged (dims None)."""
        if not x.seq:
            return x.value, None
        lead = self.op(f, "Shape", [x.value], {"start": 0, "end": 2})  # (2,): N, T
        return self.op(f, "Reshape", [x.value, self.i64([-1, *x.shape])]), lead

    def unfold_time(self, f: Function, y: ir.Value, lead: ir.Value, shape: tuple[int, ...], *,
                    final: bool = False) -> ir.Value:
        """(N*T, shape...) back to (N, T, shape...)."""
        dims = self.op(f, "Concat", [lead, self.i64(list(shape))], {"axis": 0})
        return self.op(f, "Reshape", [y, dims], final=final)

    def reshape(self, f: Function, x: T, shape: tuple[int, ...], *, final: bool = False) -> T:
        """Reshape the sample of ``x`` to ``shape`` (the batch axis is kept)."""
        target = [0] * x.lead + list(shape)
        v = self.op(f, "Reshape", [x.value, self.i64(target)], final=final)
        return x.like(v, tuple(shape))


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
