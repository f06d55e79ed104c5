"""Reconstructing a CNTK v2 function graph from a decoded model dictionary.

A saved ``CompositeFunction`` lists its variables (``inputs``: Input, Parameter, Constant,
Placeholder) and its primitive functions (topologically sorted). Output variables are not
stored: output ``i`` of function ``F`` is named ``F_Output_i``. Blocks (``cntk.layers``
Dense/Convolution/...) store their inner primitives flat in the same list; a Block maps each
inner Placeholder to an outer variable, and its output is its inner root's output. This
module resolves those indirections so that every primitive function's inputs name a real
variable or another primitive's output.

Recurrence makes the graph cyclic: ``PastValue(h)`` feeds the cell that computes ``h``. The
functions are ordered by strongly connected components (dependencies first); a component
with a cycle is a ``RecurrentLoop`` whose members are ordered within one time step (the
delays' operand edges cut) and lowered together by ``loops.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from portanet.converters.cntk.reader import Axis, NDShape
from portanet.errors import ConversionError, InvalidModelError

FRAMEWORK = "cntk"

#: CNTK's PrimitiveOpType numbers (append-only in CNTK, so stable across versions)
OP_NAMES: dict[int, str] = {
    0: "Negate", 1: "Sigmoid", 2: "Tanh", 3: "ReLU", 4: "Exp", 5: "Log", 6: "Sqrt", 7: "Floor",
    8: "Abs", 9: "Reciprocal", 10: "Softmax", 11: "Hardmax", 12: "TransposeAxes", 13: "Where",
    14: "Slice", 15: "Dropout", 16: "Reshape", 17: "Pooling", 18: "SumAll", 19: "Plus", 20: "Minus",
    21: "ElementTimes", 22: "Equal", 23: "NotEqual", 24: "Less", 25: "LessEqual", 26: "Greater",
    27: "GreaterEqual", 28: "PackedIndex", 29: "GatherPacked", 30: "ScatterPacked", 31: "Times",
    32: "TransposeTimes", 33: "Convolution", 34: "SquaredError", 35: "CrossEntropyWithSoftmax",
    36: "ClassificationError", 37: "PastValue", 38: "FutureValue", 39: "ReduceElements",
    40: "BatchNormalization", 41: "Clip", 42: "Select", 43: "Splice", 44: "Combine",
    45: "RandomSample", 46: "RandomSampleInclusionFrequency", 47: "ROIPooling", 48: "Logistic",
    49: "OptimizedRNNStack", 50: "ReconcileDynamicAxis", 51: "LogSoftmax", 52: "LogPlus",
    53: "CosDistance", 54: "Sin", 55: "Cos", 56: "Pass", 57: "Block", 58: "Unpooling",
    59: "LambdaRank", 60: "NDCG", 61: "EditDistanceError", 62: "NoOp", 63: "LabelsToGraph",
    64: "StopGradient", 65: "ELU", 66: "ForwardBackward", 67: "CosDistanceWithNegativeSamples",
    68: "OneHot", 69: "Pow", 70: "ToSequence", 71: "ToSequenceLike", 72: "UnpackSequence",
    73: "Assign", 74: "Gather", 75: "StableSigmoid", 76: "RandomDistribution", 77: "Sinh",
    78: "Cosh", 79: "UnpackBatch", 80: "ToBatch", 81: "Asin", 82: "Acos", 83: "Pad", 84: "Crop",
    85: "Atanh", 86: "Asinh", 87: "TopK", 88: "Squeeze", 89: "ConstantOp",
    90: "LatticeSequenceWithSoftmax", 91: "Cast", 92: "EyeLikeOp", 93: "CustomProxyOp",
    94: "StraightThrough", 95: "Tan", 96: "Atan",
}
OP_NUMBERS = {v: k for k, v in OP_NAMES.items()}

# VariableKind
INPUT, OUTPUT, PARAMETER, CONSTANT, PLACEHOLDER = 0, 1, 2, 3, 4
_KIND_NAMES = {INPUT: "Input", OUTPUT: "Output", PARAMETER: "Parameter", CONSTANT: "Constant",
               PLACEHOLDER: "Placeholder"}


@dataclass
class Variable:
    """A CNTK variable. ``shape`` is the *sample* shape in NumPy order (CNTK's reversed);
    ``dynamic`` is True when it has dynamic (batch/sequence) axes."""

    uid: str
    kind: int
    name: str
    shape: tuple[int, ...]
    dynamic: bool
    value: np.ndarray | None = None
    #: the name of its ordered (sequence) dynamic axis, "" when it has none
    sequence_axis: str = ""

    @property
    def sequence(self) -> bool:
        return bool(self.sequence_axis)

    @property
    def kind_name(self) -> str:
        return _KIND_NAMES.get(self.kind, str(self.kind))


@dataclass
class Function:
    """A CNTK primitive function, inputs already resolved through Blocks and aliases."""

    uid: str
    op: int
    name: str
    inputs: list[str]
    attributes: dict[str, Any]
    version: int = 0
    block_name: str = ""

    @property
    def op_name(self) -> str:
        return OP_NAMES.get(self.op, f"op{self.op}")

    @property
    def output(self) -> str:
        return f"{self.uid}_Output_0"


@dataclass
class CntkGraph:
    """The resolved graph: variables, primitives in topological order, graph outputs."""

    variables: dict[str, Variable]
    functions: list[Function]
    outputs: list[str]
    #: output uid -> display name (the producing function's name, where it has one)
    output_names: dict[str, str] = field(default_factory=dict)
    #: the recurrent loops (cycles through PastValue/FutureValue); their members are
    #: contiguous in ``functions``
    loops: list[RecurrentLoop] = field(default_factory=list)

    def loop_of(self, uid: str) -> RecurrentLoop | None:
        for lp in self.loops:
            if uid in lp.members:
                return lp
        return None


#: the delay ops: PastValue(x, initial, offset)[t] = x[t - offset], FutureValue: x[t + offset]
DELAYS = ("PastValue", "FutureValue")


@dataclass
class RecurrentLoop:
    """A strongly connected set of functions: one time step of a recurrence.

    ``members`` are in within-step order (every member after the members it reads, the
    delays' operands excepted: a delay reads its operand from an earlier (PastValue) or
    later (FutureValue) step). ``delays`` are the members that close the cycle.
    """

    members: list[str]
    delays: list[str]


def _int(d: dict[str, Any], key: str, where: str, owner: Any) -> int:
    """``d[key]`` as an int (0 when absent); a corrupt entry (no value, wrong type) is refused."""
    v = d.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidModelError(
            f"{where}: corrupt CNTK model: '{key}' of '{owner}' is {type(v).__name__ if v is not None else 'empty'}, "
            "expected an integer"
        )
    return v


def _names(d: dict[str, Any], key: str, where: str, owner: Any) -> list[str]:
    """``d[key]`` as a list of uids (empty when absent)."""
    v = d.get(key) or []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidModelError(f"{where}: corrupt CNTK model: '{key}' of '{owner}' is not a list of names")
    return v


def _variable(d: dict[str, Any], where: str) -> Variable:
    if not isinstance(d, dict) or "uid" not in d:
        raise InvalidModelError(f"{where}: corrupt CNTK model: a variable entry has no uid")
    shape = d.get("shape")
    if not isinstance(shape, NDShape):
        raise InvalidModelError(f"{where}: corrupt CNTK model: variable '{d['uid']}' has no shape")
    dims = shape.numpy()
    kind = _int(d, "kind", where, d["uid"])
    if kind == INPUT and any(x is None for x in dims):
        raise InvalidModelError(
            f"{where}: CNTK input '{d.get('name') or d['uid']}' has a free/inferred dimension {list(shape.dims)}; "
            "expected a fully specified sample shape"
        )
    value = d.get("value")
    if value is not None:
        value = np.asarray(value)
        dims = value.shape
    return Variable(
        uid=str(d["uid"]),
        kind=kind,
        name=str(d.get("name", "") or ""),
        shape=tuple(int(x) if x is not None else -1 for x in dims),
        dynamic=bool(d.get("dynamic_axis")),
        value=value,
        sequence_axis=next((a.name or "sequence" for a in d.get("dynamic_axis") or []
                            if isinstance(a, Axis) and a.is_ordered_dynamic_axis), ""),
    )


def _attributes(d: dict[str, Any], where: str, uid: str) -> dict[str, Any]:
    attrs = d.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise InvalidModelError(f"{where}: corrupt CNTK model: 'attributes' of '{uid}' is not a dictionary")
    return attrs


def build_graph(model: dict[str, Any], where: str) -> CntkGraph:
    """Resolve a decoded model dictionary (see ``reader.read_model``) into a ``CntkGraph``."""
    variables = {v.uid: v for v in (_variable(d, where) for d in model["inputs"])}
    raw: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for d in model["primitive_functions"]:
        if not isinstance(d, dict) or "uid" not in d:
            raise InvalidModelError(f"{where}: corrupt CNTK model: a primitive function entry has no uid")
        uid = str(d["uid"])
        op = _int(d, "op", where, uid)
        if op not in OP_NAMES:
            raise ConversionError(
                f"op number {op} is not a CNTK PrimitiveOpType (known: 0-{max(OP_NAMES)}); "
                "the file is corrupt or from an unknown CNTK version",
                framework=FRAMEWORK, layer=uid, layer_type=f"op {op}", path=where,
            )
        raw[uid] = d
        order.append(uid)

    # alias: a name that stands for another (placeholder -> outer variable, block/combine
    # output -> inner output)
    alias: dict[str, str] = {}
    block_of: dict[str, str] = {}
    block_roots: dict[str, str] = {}
    for uid in order:
        d = raw[uid]
        op = _int(d, "op", where, uid)
        ins = _names(d, "inputs", where, uid)
        if op == OP_NUMBERS["Block"]:
            comp = d.get("block_function_composite") or {}
            root = comp.get("root") if isinstance(comp, dict) else None
            keys = _names(d, "block_function_composite_arguments_map_keys", where, uid)
            vals = _names(d, "block_function_composite_arguments_map_values", where, uid)
            if not isinstance(root, str) or not root or len(keys) != len(vals):
                raise InvalidModelError(f"{where}: corrupt CNTK Block '{uid}': missing composite root or argument map")
            for k, v in zip(keys, vals):
                alias[str(k)] = str(v)
            # output i of the Block is output i of its root (a Combine for multi-output Blocks)
            block_roots[uid] = str(root)
            label = str(d.get("name") or uid)
            block_of[str(root)] = label
            root_d = raw.get(str(root))
            if root_d is not None and root_d.get("op") == OP_NUMBERS["Combine"]:
                # a multi-output Block (an LSTM cell's h and c): its outputs are "<name>_<i>"
                for i, x in enumerate(_names(root_d, "inputs", where, root)):
                    owner = x.rpartition("_Output_")[0]
                    block_of.setdefault(owner, f"{label}_{i}")
        elif op == OP_NUMBERS["Combine"]:
            for i, x in enumerate(ins):
                alias[f"{uid}_Output_{i}"] = x

    def resolve(name: str) -> str:
        seen = set()
        while True:
            if name in seen:
                raise InvalidModelError(f"{where}: corrupt CNTK model: cyclic reference through '{name}'")
            seen.add(name)
            if name in alias:
                name = alias[name]
                continue
            owner, sep, idx = name.rpartition("_Output_")
            if sep and owner in block_roots:
                name = f"{block_roots[owner]}_Output_{idx}"
                continue
            return name

    producers = {f"{uid}_Output_0": uid for uid in order}
    root = str(model["root"])
    if root not in raw:
        raise InvalidModelError(f"{where}: corrupt CNTK model: root function '{root}' is not in the model")
    root_op = _int(raw[root], "op", where, root)
    if root_op == OP_NUMBERS["Combine"]:
        outs = [resolve(x) for x in _names(raw[root], "inputs", where, root)]
    else:
        outs = [resolve(f"{root}_Output_0")]

    functions: dict[str, Function] = {}
    for uid in order:
        d = raw[uid]
        op = _int(d, "op", where, uid)
        if op in (OP_NUMBERS["Block"], OP_NUMBERS["Combine"]):
            continue
        functions[uid] = Function(
            uid=uid,
            op=op,
            name=str(d.get("name", "") or ""),
            inputs=[resolve(x) for x in _names(d, "inputs", where, uid)],
            attributes=_attributes(d, where, uid),
            version=_int(d, "version", where, uid),
            block_name=block_of.get(uid, ""),
        )

    components = _components(functions, producers, variables, outs, where)
    loops = [_loop(comp, functions, producers, where) for comp in components if _is_cycle(comp, functions, producers)]
    loop_order = {u: i for lp in loops for i, u in enumerate(lp.members)}
    needed: list[Function] = []
    for comp in components:
        # a loop's members in within-step order; other components are single functions
        needed.extend(functions[u] for u in sorted(comp, key=lambda u: loop_order.get(u, 0)))
    names = {}
    for out in outs:
        fuid = producers.get(out)
        f = functions.get(fuid) if fuid else None
        label = (f.name or f.block_name) if f else ""
        names[out] = label or out
    return CntkGraph(variables=variables, functions=needed, outputs=outs, output_names=names, loops=loops)



def _components(functions: dict[str, Function], producers: dict[str, str], variables: dict[str, Variable],
                outs: list[str], where: str) -> list[list[str]]:
    """The strongly connected components of the functions the outputs need, dependencies
    first (Tarjan's algorithm, iterative so deep nets are fine). A recurrent loop is one
    component; every other function is a component of its own."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []

    def producer(name: str) -> str | None:
        """The function producing ``name``; None for a (bound) variable."""
        if name in variables:
            if variables[name].kind == PLACEHOLDER:
                raise InvalidModelError(f"{where}: CNTK placeholder '{name}' is not bound to any variable")
            return None
        p = producers.get(name)
        if p is None or p not in functions:
            raise InvalidModelError(f"{where}: corrupt CNTK model: '{name}' is neither a variable nor a function output")
        return p

    def deps(fuid: str) -> list[str]:
        return [p for p in map(producer, functions[fuid].inputs) if p is not None]

    def visit(w: str, work: list[tuple[str, list[str], int]]) -> None:
        index[w] = low[w] = len(index)
        stack.append(w)
        on_stack.add(w)
        work.append((w, deps(w), 0))

    for out in outs:
        root = producer(out)
        if root is None or root in index:
            continue
        work: list[tuple[str, list[str], int]] = []
        visit(root, work)
        while work:
            v, ds, i = work.pop()
            if i < len(ds):
                work.append((v, ds, i + 1))
                w = ds[i]
                if w not in index:
                    visit(w, work)
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                result.append(comp)
    return result


def _is_cycle(comp: list[str], functions: dict[str, Function], producers: dict[str, str]) -> bool:
    return len(comp) > 1 or any(producers.get(x) == comp[0] for x in functions[comp[0]].inputs)


def _loop(comp: list[str], functions: dict[str, Function], producers: dict[str, str], where: str) -> RecurrentLoop:
    """A cycle's members in within-step order; the cycle must pass through the operand of a
    PastValue/FutureValue (a cycle without a delay is corrupt)."""
    members = set(comp)
    delays = [u for u in comp if functions[u].op_name in DELAYS and functions[u].inputs
              and producers.get(functions[u].inputs[0]) in members]
    # Kahn's algorithm with the delays' operand edges cut; ties keep the file order
    file_pos = {u: i for i, u in enumerate(functions)}
    indeg = {u: 0 for u in comp}
    succ: dict[str, list[str]] = {u: [] for u in comp}
    for u in comp:
        ins = functions[u].inputs[1:] if u in delays else functions[u].inputs
        for name in ins:
            p = producers.get(name)
            if p in members:
                indeg[u] += 1
                succ[p].append(u)
    ready = sorted((u for u in comp if indeg[u] == 0), key=file_pos.get)
    order: list[str] = []
    while ready:
        u = ready.pop(0)
        order.append(u)
        for s_ in succ[u]:
            indeg[s_] -= 1
            if indeg[s_] == 0:
                ready.append(s_)
        ready.sort(key=file_pos.get)
    if not delays or len(order) != len(comp):
        rest = sorted(members - set(order)) or sorted(members)
        raise InvalidModelError(
            f"{where}: CNTK functions {', '.join(rest)} form a cycle that does not pass through a PastValue/FutureValue"
        )
    return RecurrentLoop(members=order, delays=sorted(delays, key=order.index))
