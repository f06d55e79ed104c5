"""Lowering a resolved CNTK graph to the IR."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.converters.cntk import ops  # noqa: F401  (registers the handlers)
from portanet.converters.cntk.context import HANDLERS, Ctx, T
from portanet.converters.cntk.graph import (
    CONSTANT,
    FRAMEWORK,
    INPUT,
    PARAMETER,
    CntkGraph,
    Variable,
    build_graph,
)
from portanet.converters.cntk.loops import DEFAULT_SEQUENCE_AXIS, TIME, lower_loop, support_name, uses_time
from portanet.converters.cntk.reader import read_model
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidInputError
from portanet.ir.builder import BATCH, GraphBuilder

log = logging.getLogger(__name__)


def convert_file(path: Path, options: ConvertOptions | None = None) -> ir.Model:
    """Convert one CNTK v2 model file to the IR."""
    opts = options or ConvertOptions()
    where = str(path)
    model = read_model(path)
    graph = build_graph(model, where)
    HANDLERS.check_supported(((f.uid, support_name(graph, f)) for f in graph.functions), path=where)
    name = str(model.get("name") or Path(path).stem)
    b = GraphBuilder(FRAMEWORK, name=name)
    values = _lower(b, graph, opts, where)
    for out in graph.outputs:
        t = values[out]
        # the producing function's CNTK name where it has one ("output"), else "<uid>_Output_0"
        b.add_output(t.value, name=graph.output_names.get(out, out))
    _drop_unused_initializers(b)
    return b.build(source_files=[path], options=opts.as_metadata(),
                   extra_metadata={"portanet.cntk.root": str(model.get("root", ""))})


def _input_shape(var: Variable, name: str, opts: ConvertOptions, where: str, timed: bool) -> list[int | str]:
    # the time axis is named after CNTK's sequence axis: inputs on different axes (an encoder's
    # and a decoder's sequence) have independent lengths
    time = TIME if var.sequence_axis == DEFAULT_SEQUENCE_AXIS else f"{TIME}_{var.sequence_axis}"
    lead: list[int | str] = ([BATCH] if var.dynamic else []) + ([time] if timed else [])
    dims: list[int | str] = lead + list(var.shape)
    override = opts.input_shapes.get(name) or opts.input_shapes.get(var.uid)
    if override is None and "" in opts.input_shapes:
        override = opts.input_shapes[""]
    if override is not None:
        if len(override) != len(dims):
            raise InvalidInputError(f"{where}: input '{name}' has rank {len(dims)} ({dims}), --input-shape gives "
                                    f"{len(override)} dims")
        # only the batch dimension may change: the weights fix the sample shape
        if list(override[len(lead):]) != list(var.shape):
            raise InvalidInputError(f"{where}: input '{name}' has sample shape {list(var.shape)}; --input-shape "
                                    f"{override} changes it")
        dims = list(override)
    elif var.dynamic and not opts.dynamic_batch:
        dims[0] = 1
    return dims


def _lower(b: GraphBuilder, graph: CntkGraph, opts: ConvertOptions, where: str) -> dict[str, T]:
    ctx = Ctx(b, graph)
    values: dict[str, T] = {}
    # a sequence axis is a real time axis when some function reads the sequence as a whole;
    # otherwise every step is an independent sample (CNTK's per-step semantics) and the
    # sequence folds into the batch axis as it always has
    timed = uses_time(graph)
    inputs = [v for v in graph.variables.values() if v.kind == INPUT]
    name_counts: dict[str, int] = {}
    for v in inputs:
        name_counts[v.name] = name_counts.get(v.name, 0) + 1

    def variable(uid: str) -> T:
        if uid in values:
            return values[uid]
        var = graph.variables[uid]
        if var.kind == INPUT:
            name = var.name if var.name and name_counts[var.name] == 1 else var.uid
            seq = timed and var.sequence and var.dynamic
            v = b.add_input(name, _input_shape(var, name, opts, where, seq))
            t = T(v, var.shape, var.dynamic, seq=seq)
        elif var.kind in (PARAMETER, CONSTANT):
            if var.value is None:
                raise ConversionError(f"{var.kind_name} '{var.uid}' has no stored value", framework=FRAMEWORK,
                                      layer=var.uid, path=where)
            arr = var.value
            if arr.dtype == np.float64:
                arr = arr.astype(np.float32)
            with b.layer(var.uid, var.kind_name):
                t = T(b.initializer(var.uid, arr), tuple(arr.shape), False, arr)
        else:
            raise ConversionError(f"variable '{uid}' of kind {var.kind_name} cannot be an operand",
                                  framework=FRAMEWORK, layer=uid, path=where)
        values[uid] = t
        return t

    # graph inputs first, in file order, so the ONNX interface is stable
    for v in inputs:
        variable(v.uid)
    def operand(name: str) -> T:
        return values[name] if name in values else variable(name)

    for f in graph.functions:
        loop = graph.loop_of(f.uid)
        if loop is not None:
            if f.uid == loop.members[0]:
                try:
                    values.update(lower_loop(ctx, loop, operand, where))
                except ConversionError as exc:  # located at the loop's first function if not closer
                    raise exc.located(framework=FRAMEWORK, layer=f.uid, layer_type=f.op_name, path=where) from None
            continue
        ins: list[Any] = [operand(x) for x in f.inputs]
        with b.layer(f.uid, f.op_name):
            values[f.output] = HANDLERS.call(f.op_name, f.uid, ctx, f, ins, path=where)
    for out in graph.outputs:
        if out not in values:
            values[out] = variable(out)
    return values


def _drop_unused_initializers(b: GraphBuilder) -> None:
    """Handlers fold reshapes of stored tensors into new initializers; drop the originals."""
    outs = set(map(id, b.outputs))
    b.initializers = [v for v in b.initializers if v.uses() or id(v) in outs]
