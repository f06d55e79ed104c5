"""The PyTorch code writer: an IR graph -> the text of a standalone ``nn.Module`` file.

Emitters (one module per op family under ``ops/``, registered with ``@emitter``) receive the
writer and the node and return the Python expression of the node's output(s); layers with
weights are declared through ``writer.module`` (an ``nn.Conv2d(...)`` line in ``__init__``,
named after the source layer) and free tensors through ``writer.tensor`` (a parameter or a
buffer). The writer assigns each expression to a local variable in ``forward``, one line per
IR node, reusing a variable when the value it held is dead (as hand-written code does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.errors import PortanetError
from portanet.export.graph import ExportGraph, Problem, identifier, raise_problems, scope_parts

Emitter = Callable[["TorchWriter", ir.Node], "str | list[str]"]
_EMITTERS: dict[str, Emitter] = {}

#: names the generated file uses itself
_RESERVED = {"self", "torch", "nn", "F", "load", "math"}


class Unsupported(PortanetError):
    """An emitter cannot express this node (the reason becomes the error's key)."""


def emitter(*op_types: str) -> Callable[[Emitter], Emitter]:
    """Register ``fn`` as the PyTorch emitter of ``op_types``."""

    def deco(fn: Emitter) -> Emitter:
        for t in op_types:
            _EMITTERS[t] = fn
        return fn

    return deco


def supported_ops() -> set[str]:
    _load()
    return set(_EMITTERS)


@dataclass
class _Scope:
    names: set[str] = field(default_factory=set)
    children: dict[str, tuple[str, _Scope]] = field(default_factory=dict)


@dataclass
class TorchCode:
    """The generated file and what the verifier needs to tap intermediate values."""

    source: str
    class_name: str
    state_dict: dict[str, np.ndarray]
    #: 1-based line of the file -> (local variable, IR value name) assigned there
    taps: dict[int, tuple[str, str]]
    input_names: list[str]
    output_names: list[str]


class TorchWriter:
    """Collects ``__init__`` and ``forward`` lines while the emitters run (see module doc)."""

    def __init__(self, g: ExportGraph, class_name: str) -> None:
        _load()
        self.g = g
        self.class_name = class_name
        self.init_lines: list[str] = []
        self.fwd: list[tuple[str, str | None]] = []  # (line, IR value name tapped there)
        self.state: dict[str, np.ndarray] = {}
        self.uses_f = False
        self.uses_math = False
        self._root = _Scope(names=set(_RESERVED) | set(dir(_NNModuleNames)))
        self._tensor_attrs: dict[int, str] = {}
        self._vars: dict[int, str] = {}
        self._locals: set[str] = set(_RESERVED)
        self._chain: set[str] = set()  # short chain variables (x, x_1, ...)
        self._free_chain: list[str] = []  # chain variables whose value is dead
        self.node: ir.Node | None = None

    # -- helpers for emitters -----------------------------------------------------------------
    def x(self, v: ir.Value | None) -> str:
        """The expression of input value ``v``: a local, a literal or a tensor attribute."""
        if v is None or v.name == "":
            return "None"
        if id(v) in self._vars:
            return self._vars[id(v)]
        c = self.g.const(v)
        if c is None:
            raise Unsupported(f"input {v.name} has no value")
        if c.ndim == 0 or (c.size == 1 and self._scalar_ok(v)):
            return literal(c.reshape(-1)[0].item())
        return self.tensor(v)

    def _scalar_ok(self, v: ir.Value) -> bool:
        # a one-element constant may become a Python number when broadcasting it does not
        # raise the rank of the result
        node = self.node
        if node is None or not node.outputs:
            return False
        out_rank = self.g.rank(node.outputs[0])
        c = self.g.const(v)
        return out_rank is not None and c is not None and c.ndim <= out_rank

    def tensor(self, v: ir.Value | np.ndarray, suffix: str = "", kind: str | None = None) -> str:
        """A tensor attribute for an IR constant (or an array): an ``nn.Parameter`` when the IR
        says it is trainable, a buffer otherwise. Returns ``self.<path>``."""
        if isinstance(v, ir.Value):
            key = id(v)
            if key in self._tensor_attrs:
                return self._tensor_attrs[key]
            arr = self.g.const(v)
            kind = kind or ("param" if self.g.kind(v) == "param" else "buffer")
            suffix = suffix or identifier(v.name or "const", lower=True)
        else:
            key, arr = None, v
            kind = kind or "buffer"
        assert arr is not None and self.node is not None
        arr = np.ascontiguousarray(arr)
        parts = scope_parts(self.g.layer(self.node))
        scope, path = self._scope(parts[:-1])
        leaf = self._unique(scope, f"{parts[-1]}_{suffix}" if suffix else parts[-1])
        owner = "self" + "".join(f".{p}" for p in path)
        full = ".".join([*path, leaf])
        shape = ", ".join(str(d) for d in arr.shape)
        empty = f"torch.empty({shape}{', dtype=' + torch_dtype(arr.dtype) if arr.dtype != np.float32 else ''})"
        if kind == "param":
            self.init_lines.append(f"{owner}.{leaf} = nn.Parameter({empty})")
        else:
            self.init_lines.append(f'{owner}.register_buffer("{leaf}", {empty})')
        self.state[full] = arr
        ref = f"{owner}.{leaf}"
        if key is not None:
            self._tensor_attrs[key] = ref
        return ref

    def module(self, ctor: str, tensors: dict[str, np.ndarray | None], name: str | None = None) -> str:
        """Declare ``self.<layer> = <ctor>`` named after the current node's source layer, with
        state ``tensors`` (``weight``, ``bias``, ``running_mean``, ...). Returns ``self.<path>``."""
        assert self.node is not None
        parts = scope_parts(name or self.g.layer(self.node))
        scope, path = self._scope(parts[:-1])
        leaf = self._unique(scope, parts[-1])
        owner = "self" + "".join(f".{p}" for p in path)
        self.init_lines.append(f"{owner}.{leaf} = {ctor}")
        full = ".".join([*path, leaf])
        for k, arr in tensors.items():
            if arr is not None:
                self.state[f"{full}.{k}"] = np.ascontiguousarray(arr)
        return f"{owner}.{leaf}"

    def const(self, v: ir.Value | None) -> np.ndarray | None:
        return self.g.const(v)

    def ints(self, v: ir.Value | None, what: str = "input") -> list[int]:
        got = self.g.ints(v)
        if got is None:
            raise Unsupported(f"run-time {what}")
        return got

    # -- scopes ---------------------------------------------------------------------------------
    def _scope(self, parts: list[str]) -> tuple[_Scope, list[str]]:
        """The nested ``nn.Module`` container for source scope ``parts`` (created on first use)."""
        scope, path = self._root, []
        for p in parts:
            if p not in scope.children:
                name = self._unique(scope, p)
                owner = "self" + "".join(f".{q}" for q in path)
                self.init_lines.append(f"{owner}.{name} = nn.Module()")
                scope.children[p] = (name, _Scope(names=set(dir(_NNModuleNames))))
            name, scope = scope.children[p]
            path.append(name)
        return scope, path

    @staticmethod
    def _unique(scope: _Scope, base: str) -> str:
        name, i = base, 1
        while name in scope.names:
            name = f"{base}_{i}"
            i += 1
        scope.names.add(name)
        return name

    def _local(self, base: str) -> str:
        base = identifier(base, lower=True)
        name, i = base, 1
        while name in self._locals:
            name = f"{base}_{i}"
            i += 1
        self._locals.add(name)
        return name

    # -- the walk -------------------------------------------------------------------------------
    def write(self) -> TorchCode:
        g = self.g
        nodes = list(g.nodes())
        last_use: dict[int, int] = {}
        for i, node in enumerate(nodes):
            for v in node.inputs:
                if v is not None:
                    last_use[id(v)] = i
        for v in g.outputs:
            last_use[id(v)] = len(nodes) + 1
        args = []
        for v in g.inputs:
            name = self._local(v.name or "x")
            self._vars[id(v)] = name
            args.append(name)
            last_use[id(v)] = len(nodes) + 1  # inputs keep their names (readability)
        problems: list[Problem] = []
        for i, node in enumerate(nodes):
            self.node = node
            fn = _EMITTERS.get(node.op_type)
            if fn is None or node.domain not in ("", "ai.onnx"):
                problems.append(Problem(node.op_type, g.layer(node)))
                continue
            try:
                expr = fn(self, node)
            except Unsupported as exc:
                problems.append(Problem(f"{node.op_type} ({exc})", g.layer(node)))
                continue
            outs = [v for v in node.outputs]
            if isinstance(expr, str) and expr in self._vars.values() and len(outs) == 1:
                # an alias (Identity, Dropout in eval): no line, the output shares the name
                self._vars[id(outs[0])] = expr
                continue
            names = []
            # a value read once is a link of a chain: it goes to a short variable (x) that is
            # reused once dead, like hand-written code; a value read several times (a branch
            # point) or returned gets a name after its source layer
            dying = [self._vars[id(v)] for v in node.inputs
                     if v is not None and id(v) in self._vars and last_use.get(id(v)) == i
                     and self._vars[id(v)] in self._chain]
            for k, v in enumerate(outs):
                used = bool(v.uses()) or v.is_graph_output()
                if not v.name or not used:
                    names.append("_")
                    continue
                if v.is_graph_output():
                    name = self._local(v.name)
                elif len(v.uses()) > 1:
                    name = self._local(scope_parts(g.layer(node))[-1] + (f"_{k}" if k else ""))
                elif dying:
                    name = dying.pop(0)
                elif self._free_chain:
                    name = self._free_chain.pop(0)
                else:
                    name = self._local("x")
                    self._chain.add(name)
                self._vars[id(v)] = name
                names.append(name)
            self._free_chain += [d for d in dying if d not in names]
            exprs = expr if isinstance(expr, list) else None
            lhs = ", ".join(names)
            rhs = ", ".join(exprs) if exprs is not None else expr
            self.fwd.append((f"{lhs} = {rhs}", outs[0].name if names[0] != "_" else None))
        raise_problems(problems, "pytorch")
        rets = [self._vars.get(id(v)) or self.x(v) for v in g.outputs]
        return self._render(args, rets)

    def _render(self, args: list[str], rets: list[str]) -> str:
        g = self.g
        lines: list[str] = []
        shapes = []
        for v, a in zip(g.inputs, args):
            dims = g.shape(v) or []
            shapes.append(f"{a}: ({', '.join(str(d) if d is not None else '?' for d in dims)})")
        lines += [
            f'"""{self.class_name}: a PyTorch module exported by portanet from {_source(g)}.',
            "",
            "Weights are in the .pt file beside this one (a state dict). Usage:",
            "",
            "    model = load()  # eval mode",
            f"    y = model({', '.join(args)})",
            "",
            f"Inputs: {'; '.join(shapes)}.",
            '"""',
            "",
        ]
        if self.uses_math:
            lines.append("import math")
            lines.append("")
        lines.append("import torch")
        if self.uses_f:
            lines.append("import torch.nn.functional as F")
        lines.append("from torch import nn")
        lines += ["", "", f"class {self.class_name}(nn.Module):", "    def __init__(self) -> None:",
                  "        super().__init__()"]
        lines += [f"        {s}" for s in self.init_lines]
        sig = ", ".join(f"{a}: torch.Tensor" for a in args)
        ret_t = "torch.Tensor" if len(rets) == 1 else f"tuple[{', '.join(['torch.Tensor'] * len(rets))}]"
        lines += ["", f"    def forward(self, {sig}) -> {ret_t}:"]
        taps: dict[int, tuple[str, str]] = {}
        for line, tapped in self.fwd:
            lines.append(f"        {line}")
            if tapped is not None:
                taps[len(lines)] = (line.split(" = ")[0].split(",")[0].strip(), tapped)
        lines.append(f"        return {', '.join(rets)}")
        lines += [
            "", "",
            f"def load(weights: str | None = None) -> {self.class_name}:",
            '    """The network with its weights (default: the .pt file beside this one), in eval mode."""',
            f"    model = {self.class_name}()",
            '    path = weights if weights is not None else __file__.rsplit(".", 1)[0] + ".pt"',
            '    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))',
            "    return model.eval()",
            "",
        ]
        self._taps = taps
        return "\n".join(lines)


def _source(g: ExportGraph) -> str:
    """"caffe (a.prototxt, b.caffemodel)" from the model's metadata, else "its IR"."""
    import json

    from portanet.ir.metadata import FILES_KEY, FRAMEWORK_KEY

    props = g.model.metadata_props
    fw = props.get(FRAMEWORK_KEY)
    if not fw:
        return "its IR"
    try:
        files = [f["file"] for f in json.loads(props.get(FILES_KEY, "[]"))]
    except (ValueError, TypeError, KeyError):
        files = []
    return f"{fw} ({', '.join(files)})" if files else fw


class _NNModuleNames:
    """Attribute names an nn.Module already has (generated names must not shadow them)."""

    training = forward = state_dict = parameters = buffers = modules = children = None
    eval = train = to = cuda = cpu = float = double = half = apply = zero_grad = None
    register_buffer = register_parameter = add_module = get_parameter = get_buffer = None
    named_parameters = named_buffers = named_modules = named_children = type = extra_repr = None


def literal(v: Any) -> str:
    """A Python literal for a scalar (floats keep full float32 precision)."""
    if isinstance(v, bool | np.bool_):
        return "True" if v else "False"
    if isinstance(v, int | np.integer):
        return str(int(v))
    f = float(v)
    if math.isinf(f):
        return "float('inf')" if f > 0 else "float('-inf')"
    if math.isnan(f):
        return "float('nan')"
    return repr(f)


def torch_dtype(dtype: np.dtype) -> str:
    return {
        "float32": "torch.float32", "float64": "torch.float64", "float16": "torch.float16",
        "int64": "torch.int64", "int32": "torch.int32", "int8": "torch.int8", "uint8": "torch.uint8",
        "bool": "torch.bool",
    }.get(np.dtype(dtype).name, "torch.float32")


def generate(g: ExportGraph, class_name: str) -> TorchCode:
    """Write the module file for ``g``; raises UnsupportedOpError listing every node it cannot
    express."""
    w = TorchWriter(g, class_name)
    src = w.write()
    return TorchCode(src, class_name, w.state, w._taps, [v.name or "" for v in g.inputs],
                     [v.name or "" for v in g.outputs])


_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    from portanet.export.torch_code import ops

    for info in pkgutil.iter_modules(ops.__path__):
        importlib.import_module(f"{ops.__name__}.{info.name}")
