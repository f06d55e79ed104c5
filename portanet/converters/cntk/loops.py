"""CNTK recurrent loops -> ONNX ``Scan``.

CNTK expresses recurrence as a cycle in the function graph that passes through a delay:
``PastValue(x, initial_state, offset)`` is ``x`` of ``offset`` steps earlier along the
sequence axis (``initial_state`` before the sequence start), ``FutureValue`` the same from
``offset`` steps later (``initial_state`` past the end). ``cntk.layers.Recurrence(LSTM(...))``
is such a cycle: the cell reads ``PastValue(h)`` and ``PastValue(c)`` and produces ``h`` and
``c``. ``graph.py`` finds each cycle (a strongly connected component, ``RecurrentLoop``) and
orders its members within one step.

A loop becomes one ``Scan`` over the time axis (axis 1 of the (N, T, ...) tensors, so no
transposes): the body is the loop's per-step computation lowered by the ordinary op handlers
into a ``SubgraphBuilder``; the loop's sequence operands from outside are scan inputs (one
step (N, ...) per iteration); operands without a sequence axis (weights, per-sample tensors)
are read from the outer graph; every delay is a loop-carried state; member outputs used
after the loop are scan outputs (N, T, ...). PastValue loops scan forwards, FutureValue
loops backwards (``scan_input_directions``/``scan_output_directions`` = 1, outputs come back
in time order). A delay with ``offset`` k > 1 carries a buffer of the last k values
(k, N, ...): the step reads its oldest entry and appends the new value.

CNTK does not store output shapes, and a delay's shape is its operand's, which the body
computes from the delay itself. The state shape is found by a fixed point: a first guess
(the initial state's shape, or the input dims of a ``Times`` that reads the delay), a trial
lowering, then the operand's shape, until they agree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from portanet.converters.cntk.context import HANDLERS, Ctx, T, attr
from portanet.converters.cntk.graph import DELAYS, CntkGraph, Function, RecurrentLoop
from portanet.errors import ConversionError
from portanet.ir.builder import BATCH, SubgraphBuilder

#: name of the symbolic time dimension of inputs on CNTK's default sequence axis (other
#: sequence axes, e.g. a decoder's, are ``T_<axis name>``)
TIME = "T"
DEFAULT_SEQUENCE_AXIS = "defaultDynamicAxis"
_INT64_MAX = np.iinfo(np.int64).max

#: ops that read a sequence as a whole (their presence gives sequence inputs a time axis)
SEQUENCE_OPS = frozenset({*DELAYS, "OptimizedRNNStack", "Where", "PackedIndex", "GatherPacked", "ScatterPacked",
                          "ReconcileDynamicAxis", "ToSequence", "ToSequenceLike", "UnpackSequence"})
#: ops a loop body cannot contain (they change or read the whole sequence)
_NOT_IN_LOOP = SEQUENCE_OPS - set(DELAYS)


#: ops whose output has their operands' (broadcast) shape, followed when guessing state shapes
_ELEMENTWISE = frozenset({"Plus", "Minus", "ElementTimes", "Negate", "Sigmoid", "StableSigmoid", "Tanh", "ReLU",
                          "Exp", "Log", "Abs", "Pass", "NoOp", "StopGradient", "Dropout", "Select", "LogPlus"})


def uses_time(graph: CntkGraph) -> bool:
    """Does any function read a sequence as a whole (so sequence inputs need a time axis)?"""
    return any(f.op_name in SEQUENCE_OPS for f in graph.functions)


def delay_offset(f: Function) -> int:
    return int(attr(f, "offset", 1))


def support_name(graph: CntkGraph, f: Function) -> str:
    """The op type to check for support: ``f.op_name``, or a variant name no handler takes
    for recurrent constructs portanet cannot express exactly (listed in the one
    UnsupportedOpError with every other unsupported op)."""
    op = f.op_name
    if op in DELAYS and delay_offset(f) < 1:
        return f"{op}(offset={delay_offset(f)})"
    if op == "OptimizedRNNStack":
        from portanet.converters.cntk.ops.rnn import RECURRENT_OPS

        rop = str(attr(f, "recurrentOp", "lstm"))
        if rop not in RECURRENT_OPS:
            return f"OptimizedRNNStack(recurrentOp={rop})"
    if op == "Times" and int(attr(f, "inferInputRankToMap", -1)) == -3:
        return "Times(reducing the sequence axis)"
    if op == "Where" and f.inputs:
        from portanet.converters.cntk.ops.sequence import data_independent

        if not data_independent(graph, f.inputs[0]):
            return "Where(flags computed from the data)"
    loop = graph.loop_of(f.uid)
    if loop is not None:
        kinds = {graph_fn(graph, d).op_name for d in loop.delays}
        if len(kinds) > 1 and f.uid in loop.delays:
            return f"{op}(in a loop mixing PastValue and FutureValue)"
        if op in _NOT_IN_LOOP:
            return f"{op}(inside a recurrent loop)"
    return op


def graph_fn(graph: CntkGraph, uid: str) -> Function:
    for f in graph.functions:
        if f.uid == uid:
            return f
    raise KeyError(uid)


def initial_steps(ctx: Ctx, f: Function, init: T, shape: tuple[int, ...], batch: ir.Value, k: int) -> ir.Value:
    """The ``k`` initial-state values a delay reads beyond the sequence boundary, in time
    order: (N, k, *shape). Step j is what PastValue returns at t = j, what FutureValue
    returns at t = T - k + j.

    A scalar or tensor initial state is broadcast (CNTK broadcasting). A per-sample one
    (N, ...) too. A *sequence* initial state continues the sequence, as CNTK's
    DelayedValueNode does it: PastValue takes its last k steps, FutureValue its first k; a
    1-step sequence is broadcast to all k (other lengths below k are errors in CNTK).
    """
    try:
        np.broadcast_shapes(init.shape, shape)
    except ValueError as exc:
        raise ConversionError(f"initial state of shape {list(init.shape)} does not broadcast to the delayed "
                              f"operand's shape {list(shape)}") from exc
    v = init.value
    if init.batched:
        # (N[, Tin], s...) -> (N, m, 1..., s...): sample axes aligned on the right
        if init.seq:
            future = f.op_name == "FutureValue"
            starts, ends = ([0], [k]) if future else ([-k], [_INT64_MAX])
            v = ctx.op(f, "Slice", [v, ctx.i64(starts), ctx.i64(ends), ctx.i64([1])])  # (N, min(k, Tin), s...)
        else:
            v = ctx.op(f, "Unsqueeze", [v, ctx.i64([1])])  # (N, 1, s...)
        if init.rank < len(shape):
            v = ctx.op(f, "Reshape", [v, ctx.i64([0, 0] + [1] * (len(shape) - init.rank) + list(init.shape))])
    pieces = [batch, ctx.i64([k] + list(shape))]
    return ctx.op(f, "Expand", [v, ctx.op(f, "Concat", pieces, {"axis": 0})])


def lower_loop(ctx: Ctx, loop: RecurrentLoop, operand: Callable[[str], T], where: str) -> dict[str, T]:
    """Lower one recurrent loop to a Scan; returns the T of every member output used after it."""
    graph = ctx.graph
    assert graph is not None
    fns = {f.uid: f for f in graph.functions if f.uid in set(loop.members)}
    member_outputs = {fns[u].output for u in loop.members}
    first = fns[loop.members[0]]
    backward = fns[loop.delays[0]].op_name == "FutureValue"

    # operands from outside: sequences are scanned, everything else is read from the outer graph
    outer: dict[str, T] = {}
    scanned: list[str] = []
    for u in loop.members:
        # a delay's initial state is read once, before the loop (see the Scan's initial states)
        names = fns[u].inputs[:1] if u in loop.delays else fns[u].inputs
        for name in names:
            if name in member_outputs or name in outer:
                continue
            t = operand(name)
            if t.time_index:
                raise ConversionError(f"the output of a Where ('{name}') cannot be read inside a recurrent loop",
                                      framework="cntk", layer=u, layer_type=fns[u].op_name, path=where)
            outer[name] = t
            if t.seq:
                scanned.append(name)
    if not scanned:
        raise ConversionError("the recurrent loop reads no sequence, so it has no time axis to run over",
                              framework="cntk", layer=first.uid, layer_type=first.op_name, path=where)

    # which member outputs are read after the loop (by other functions or as graph outputs)
    used_after = [fns[u].output for u in loop.members
                  if fns[u].output in graph.outputs
                  or any(fns[u].output in g.inputs for g in graph.functions if g.uid not in fns)]

    b = ctx.b
    x0 = outer[scanned[0]].value
    with b.layer(first.uid, "RecurrentLoop"):
        batch = ctx.op(first, "Shape", [x0], {"start": 0, "end": 1})  # (1,): N

    # the delays' state shapes: a guess, then the fixed point of trial lowerings
    shapes = {d: _guess_shape(fns, d, operand, member_outputs) for d in loop.delays}
    for _ in range(6):
        body, step, states_in = _lower_body(ctx, loop, fns, outer, scanned, shapes, where, used_after)
        got = {d: step[fns[d].inputs[0]].shape for d in loop.delays}
        if got == shapes:
            break
        _discard(body)
        shapes = got
    else:
        raise ConversionError("cannot determine the shapes of the loop's delayed values "
                              f"({', '.join(f'{d}: {list(s)}' for d, s in shapes.items())})",
                              framework="cntk", layer=first.uid, layer_type=first.op_name, path=where)

    # initial states (outer graph), with the provenance of their delays
    inits = []
    for d in loop.delays:
        f = fns[d]
        k = delay_offset(f)
        with b.layer(f.uid, f.op_name):
            init = operand(f.inputs[1]) if len(f.inputs) > 1 else T(ctx.const(np.float32(0)), (), False)
            steps = initial_steps(ctx, f, init, shapes[d], batch, k)  # (N, k, ...) in time order
            if k == 1:
                inits.append(ctx.op(f, "Squeeze", [steps, ctx.i64([1])]))  # (N, ...)
                continue
            if backward:
                # a backward scan reads the buffer from its end: the latest step first
                steps = ctx.op(f, "Slice", [steps, ctx.i64([-1]), ctx.i64([-_INT64_MAX]), ctx.i64([1]), ctx.i64([-1])])
            perm = [1, 0] + list(range(2, 2 + len(shapes[d])))
            inits.append(ctx.op(f, "Transpose", [steps], {"perm": perm}))  # (k, N, ...), oldest first
    n_out = len(used_after)
    direction = 1 if backward else 0
    attrs = {
        "body": ir.AttrGraph("body", body.graph()),
        "num_scan_inputs": len(scanned),
        "scan_input_axes": [1] * len(scanned),
        "scan_output_axes": [1] * n_out,
        "scan_input_directions": [direction] * len(scanned),
        "scan_output_directions": [direction] * n_out,
    }
    with b.layer(first.uid, "RecurrentLoop"):
        outs = b.op("Scan", [*inits, *(outer[n].value for n in scanned)], attrs,
                    outputs=[f"{first.uid}_state_{i}" for i in range(len(inits))] + list(used_after))
    outs = outs if isinstance(outs, tuple) else (outs,)
    result = {}
    for name, v in zip(used_after, outs[len(inits):]):
        result[name] = T(v, step[name].shape, True, seq=True)
    return result


def _discard(body: SubgraphBuilder) -> None:
    """Forget a trial body: its nodes must not count as uses of outer values."""
    for node in body.nodes:
        for i in range(len(node.inputs)):
            node.replace_input_with(i, None)


def _guess_shape(fns: dict[str, Function], d: str, operand: Callable[[str], T],
                 member_outputs: set[str]) -> tuple[int, ...]:
    f = fns[d]
    if len(f.inputs) > 1 and f.inputs[1] not in member_outputs:
        init = operand(f.inputs[1])
        if init.rank:
            return init.shape
    # a Times(W, delayed) in the loop, maybe through elementwise ops (a Stabilizer's scaling):
    # the delayed value has W's input dims
    reached = {f.output}
    for g in fns.values():  # members in within-step order
        if g.op_name == "Times" and len(g.inputs) == 2 and g.inputs[1] in reached and g.inputs[0] not in member_outputs:
            w = operand(g.inputs[0])
            r = int(attr(g, "outputRank", 1))
            return w.shape[: w.rank - r]
        if g.op_name in _ELEMENTWISE and any(x in reached for x in g.inputs):
            reached.add(g.output)
    return ()


def _lower_body(ctx: Ctx, loop: RecurrentLoop, fns: dict[str, Function], outer: dict[str, T], scanned: list[str],
                shapes: dict[str, tuple[int, ...]], where: str,
                used_after: list[str]) -> tuple[SubgraphBuilder, dict[str, T], list[ir.Value]]:
    """One step of the loop as a Scan body: inputs (states..., scanned steps...), outputs
    (new states..., per-step values read after the loop...)."""
    first = fns[loop.members[0]]
    body = SubgraphBuilder(ctx.b, name=f"{first.uid}_step")
    bctx = Ctx(body, ctx.graph)
    step: dict[str, T] = {}
    states_in: list[ir.Value] = []
    for d in loop.delays:
        f = fns[d]
        k = delay_offset(f)
        dims = [k] if k > 1 else []
        states_in.append(body.add_input(f"{d}_state", [*dims, BATCH, *shapes[d]]))
    for name in scanned:
        t = outer[name]
        step[name] = T(body.add_input(f"{name}_t", [BATCH, *t.shape]), t.shape, True)
    for name, t in outer.items():
        if name not in step:
            step[name] = t  # an outer-scope value
    for d, s in zip(loop.delays, states_in):
        f = fns[d]
        if delay_offset(f) > 1:
            with body.layer(f.uid, f.op_name):
                s = bctx.op(f, "Gather", [s, bctx.i64(0)], {"axis": 0})  # the oldest entry (N, ...)
        step[f.output] = T(s, shapes[d], True)
    for u in loop.members:
        f = fns[u]
        if u in loop.delays:
            continue
        ins = [step[x] for x in f.inputs]
        with body.layer(f.uid, f.op_name):
            step[f.output] = HANDLERS.call(f.op_name, f.uid, bctx, f, ins, path=where)
    for d, s in zip(loop.delays, states_in):
        f = fns[d]
        new = step[f.inputs[0]]
        if not new.batched or new.seq:
            raise ConversionError("the delayed value of a recurrent loop must carry the batch axis",
                                  framework="cntk", layer=f.uid, layer_type=f.op_name, path=where)
        v = new.value
        if new.shape != shapes[d]:
            body.add_output(v)  # a trial shape: the caller retries with the operand's shape
            continue
        k = delay_offset(f)
        with body.layer(f.uid, f.op_name):
            if k > 1:
                rest = bctx.op(f, "Slice", [s, bctx.i64([1]), bctx.i64([k]), bctx.i64([0])])
                v = bctx.op(f, "Concat", [rest, bctx.op(f, "Unsqueeze", [v, bctx.i64([0])])], {"axis": 0})
        body.add_output(v)
    for name in used_after:
        body.add_output(step[name].value)
    return body, step, states_in
