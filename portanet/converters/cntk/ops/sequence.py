"""Sequence-axis ops outside recurrent loops: delays, ReconcileDynamicAxis, and the
Where / PackedIndex / GatherPacked chain that ``sequence.first/last/slice/gather`` build.

Sequences are (N, T, sample...) tensors (see ``context.py``); all sequences of a batch have
the same length T.

- ``PastValue(x, init, offset=k)``: y[:, t] = x[:, t-k] for t >= k, else ``init``.
  ``FutureValue``: y[:, t] = x[:, t+k] for t+k < T, else ``init``. Outside a loop (a plain
  delay of a sequence) this is a Concat with k initial-state steps and a Slice of T steps.
  ``init`` may be a scalar, a tensor, per-sample, or a sequence (see ``loops.initial_steps``).
  Delays inside a loop are lowered with the loop (``loops.py``).
- ``ReconcileDynamicAxis(x, like)``: ``x`` broadcast to the dynamic axes of ``like``.
- CNTK's ``Sequence::Slice`` (``sequence.first``, ``sequence.last``, ``sequence.slice``) is a
  Block of ``GatherPacked(x, PackedIndex(x, Where(flags)))`` whose flags come from
  ``PastValue/FutureValue`` of constants over ``ZeroesWithDynamicAxesLike(x)``.
  ``Where(flags)`` lists the time index t ``flags[t]`` times (a new, shorter sequence);
  ``GatherPacked`` takes those steps. Such flags depend on the time position only, never on
  the data, so the indices are computed once from the first sample's flags and gathered
  along the time axis for the whole batch (exact; flags that read the data would give every
  sample its own length, which a (N, T, ...) tensor cannot hold: refused).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.converters.cntk.context import HANDLERS, Ctx, T
from portanet.converters.cntk.graph import CONSTANT, DELAYS, PARAMETER, CntkGraph, Function
from portanet.converters.cntk.loops import delay_offset, initial_steps
from portanet.errors import ConversionError

_INT64_MAX = np.iinfo(np.int64).max


@HANDLERS.register(*DELAYS)
def delay(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """A delay that is not part of a loop: shift the sequence by ``offset`` steps."""
    if not ins:
        raise ConversionError("expected 2 inputs (x, initial_state), received none")
    x = ins[0]
    if not x.seq:
        raise ConversionError(f"expected an operand with a sequence axis, received shape {list(x.full_shape)}")
    init = ins[1] if len(ins) > 1 else T(ctx.const(np.float32(0)), (), False)
    k = delay_offset(f)
    batch = ctx.op(f, "Shape", [x.value], {"start": 0, "end": 1})
    pad = initial_steps(ctx, f, init, x.shape, batch, k)  # (N, k, sample...)
    if f.op_name == "PastValue":
        # [init x k, x_0 .. x_{T-1}][:T]
        joined = ctx.op(f, "Concat", [pad, x.value], {"axis": 1})
        y = ctx.op(f, "Slice", [joined, ctx.i64([0]), ctx.i64([-k]), ctx.i64([1])], final=True)
    else:
        # [x_0 .. x_{T-1}, init x k][k:]
        joined = ctx.op(f, "Concat", [x.value, pad], {"axis": 1})
        y = ctx.op(f, "Slice", [joined, ctx.i64([k]), ctx.i64([_INT64_MAX]), ctx.i64([1])], final=True)
    return x.like(y, x.shape)


@HANDLERS.register("ReconcileDynamicAxis")
def reconcile_dynamic_axis(ctx: Ctx, f: Function, ins: list[T]) -> T:
    if len(ins) != 2:
        raise ConversionError(f"expected 2 inputs (x, layout), received {len(ins)}")
    x, like = ins
    if (x.batched, x.seq) == (like.batched, like.seq):
        return x
    if x.batched:
        raise ConversionError(f"cannot give an operand with dynamic axes {list(x.full_shape[:x.lead])} the axes "
                              f"{list(like.full_shape[:like.lead])}")
    lead = ctx.op(f, "Shape", [like.value], {"start": 0, "end": like.lead})
    dims = ctx.op(f, "Concat", [lead, ctx.i64(list(x.shape))], {"axis": 0}) if x.shape else lead
    return like.like(ctx.op(f, "Expand", [x.value, dims], final=True), x.shape)


#: ops whose output depends on the time position only when their operands do
_POSITIONAL = {*DELAYS, "Plus", "Minus", "ElementTimes", "Negate", "Abs", "Reciprocal", "Equal", "NotEqual",
               "Less", "LessEqual", "Greater", "GreaterEqual", "Select", "Clip", "Pass", "NoOp", "StopGradient",
               "Floor", "Reshape", "Squeeze"}


def data_independent(graph: CntkGraph, name: str) -> bool:
    """True when ``name``'s values depend on nothing but constants and time positions
    (``ReconcileDynamicAxis`` takes only the *layout* of its second operand)."""
    funcs = {g.output: g for g in graph.functions}
    seen: set[str] = set()
    stack = [name]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        var = graph.variables.get(n)
        if var is not None:
            if var.kind not in (CONSTANT, PARAMETER):
                return False
            continue
        g = funcs.get(n)
        if g is None:
            return False
        if g.op_name == "ReconcileDynamicAxis":
            stack.append(g.inputs[0])
        elif g.op_name in _POSITIONAL:
            stack.extend(g.inputs)
        else:
            return False
    return True


@HANDLERS.register("Where")
def where(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """Time indices t repeated flags[t] times: (K,) int64 (a ``time_index`` tensor)."""
    flags = ins[0]
    if not flags.seq:
        raise ConversionError(f"expected a sequence of flags, received shape {list(flags.full_shape)}")
    if any(d != 1 for d in flags.shape):
        raise ConversionError(f"expected one flag per step, received a sample shape {list(flags.shape)}")
    if ctx.graph is None or not data_independent(ctx.graph, f.inputs[0]):
        raise ConversionError("Where over flags computed from the data gives each sample its own sequence length; "
                              "only position-based selections (sequence.first/last/slice) are supported")
    first = ctx.op(f, "Gather", [flags.value, ctx.i64(0)], {"axis": 0})  # the first sample's flags (T, 1...)
    counts = ctx.op(f, "Cast", [ctx.op(f, "Reshape", [first, ctx.i64([-1])])], {"to": 7})  # (T,) int64
    ends = ctx.op(f, "CumSum", [counts, ctx.i64(0)])  # (T,): end of step t's repeats
    total = ctx.op(f, "ReduceSum", [counts], {"keepdims": 0})  # K
    ks = ctx.op(f, "Range", [ctx.i64(0), total, ctx.i64(1)])  # (K,)
    # index of output k = number of steps whose repeats end at or before k
    le = ctx.op(f, "LessOrEqual", [ctx.op(f, "Unsqueeze", [ends, ctx.i64([0])]),
                                   ctx.op(f, "Unsqueeze", [ks, ctx.i64([1])])])  # (K, T)
    idx = ctx.op(f, "ReduceSum", [ctx.op(f, "Cast", [le], {"to": 7}), ctx.i64([1])], {"keepdims": 0}, final=True)
    return T(idx, (), False, time_index=True)


@HANDLERS.register("PackedIndex")
def packed_index(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """The packed-layout position of each selected step: with equal-length sequences, the
    time indices themselves."""
    if len(ins) != 2 or not ins[1].time_index:
        raise ConversionError("expected (layout, Where(...)) inputs")
    return ins[1]


@HANDLERS.register("ScatterPacked")
def scatter_packed(ctx: Ctx, f: Function, ins: list[T]) -> T:
    """ScatterPacked(x, PackedIndex(cond, Where(cond)), cond): the steps of ``x`` placed at the
    selected time positions of a sequence laid out like ``cond``, zeros elsewhere (what
    ``sequence.scatter`` and ``sequence.broadcast_as`` build). ``x`` without a sequence axis
    is a 1-step sequence."""
    if len(ins) != 3 or not ins[1].time_index:
        raise ConversionError("expected (x, PackedIndex(...), layout) inputs")
    x, idx, like = ins
    if not x.batched or not like.seq:
        raise ConversionError(f"expected a batched operand and a sequence layout, received shapes "
                              f"{list(x.full_shape)} and {list(like.full_shape)}")
    xs = x.value if x.seq else ctx.op(f, "Unsqueeze", [x.value, ctx.i64([1])])  # (N, K, s...)
    perm = [1, 0] + list(range(2, 2 + x.rank))
    updates = ctx.op(f, "Transpose", [xs], {"perm": perm})  # (K, N, s...)
    t_len = ctx.op(f, "Shape", [like.value], {"start": 1, "end": 2})
    batch = ctx.op(f, "Shape", [x.value], {"start": 0, "end": 1})
    dims = ctx.op(f, "Concat", [t_len, batch, ctx.i64(list(x.shape))] if x.shape else [t_len, batch], {"axis": 0})
    zeros = ctx.op(f, "ConstantOfShape", [dims], {"value": ir.tensor(np.zeros(1, np.float32))})  # (T, N, s...)
    # the time position of update k is idx[k] (positions are distinct: one flag per step)
    scattered = ctx.op(f, "ScatterND", [zeros, ctx.op(f, "Unsqueeze", [idx.value, ctx.i64([1])]), updates])
    return like.like(ctx.op(f, "Transpose", [scattered], {"perm": perm}, final=True), x.shape)


@HANDLERS.register("GatherPacked")
def gather_packed(ctx: Ctx, f: Function, ins: list[T]) -> T:
    if len(ins) != 2 or not ins[1].time_index:
        raise ConversionError("expected (x, PackedIndex(...)) inputs")
    x, idx = ins
    if not x.seq:
        raise ConversionError(f"expected a sequence operand, received shape {list(x.full_shape)}")
    return x.like(ctx.op(f, "Gather", [x.value, idx.value], {"axis": 1}, final=True), x.shape)
