"""Lower an IR model (``onnx_ir.Model``) to a ``torch.fx.GraphModule`` wrapped in TorchModule.

Initializers are classified before any node is lowered:

* float initializers feeding BatchNormalization's running mean/var -> buffers (they change
  in ``train()`` and are saved back to the IR);
* float initializers used only as op configuration (Resize scales, Clip bounds, ...) and
  0-d float scalars (the ``0.5`` of a decomposed Gelu) -> constants;
* every other float initializer -> ``nn.Parameter``;
* non-float initializers (shapes, axes, indices) -> constants, folded at lowering time.

Constant folding: a call whose arguments are all constants is evaluated while lowering,
so static shape arithmetic never reaches the generated code. Calls whose arguments are
parameters and constants only (weight slicing, transposes, gate reordering) are hoisted
into one cached call (``param_cache``). Constants that reach it are
non-persistent buffers: they move with ``module.to(device)`` and stay out of the state dict.
"""

from __future__ import annotations

import keyword
import logging
import operator
import re
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
from torch import fx, nn

from portanet.errors import ConversionError, PortanetError, UnsupportedOpError
from portanet.ir.builder import graphs_of
from portanet.ir.frozen import frozen_names
from portanet.ir.provenance import source_of
from portanet.runtime.torch_backend.param_cache import hoist_param_expressions
from portanet.runtime.torch_backend.registry import lookup

log = logging.getLogger(__name__)

Ref = Any  # fx.Node (run-time value) | torch.Tensor (constant) | None (omitted input)

_FLOAT_IR = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}


class TorchModule(nn.Module):
    """An IR model as a trainable torch module.

    ``forward`` takes the graph inputs positionally in IR order and returns a tensor for a
    single-output graph, a tuple otherwise. Float initializers are parameters named after
    their IR names (sanitized); ``param_ir_names`` maps torch names (as in
    ``named_parameters()`` / ``named_buffers()``) back to IR initializer names.
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        input_names: list[str],
        output_names: list[str],
        param_ir_names: dict[str, str],
    ) -> None:
        super().__init__()
        self.gm = graph_module
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.param_ir_names = {f"gm.{k}": v for k, v in param_ir_names.items()}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
        return self.gm(*inputs)

    @property
    def code(self) -> str:
        """The Python code torch.fx generated for the graph (for debugging)."""
        return self.gm.code


class LowerCtx:
    """What a lowering function uses to emit torch calls into the fx graph."""

    def __init__(self, graph: fx.Graph, root: nn.Module, opset: int) -> None:
        self.graph = graph
        self.root = root
        self.opset = opset
        #: IR value -> reference, for the graph being lowered (outer-scope values of a
        #: subgraph are looked up here by the subgraph's lowering)
        self.env: dict[ir.Value, Ref] = {}
        self._lifted: dict[int, fx.Node] = {}
        self._keep: list[torch.Tensor] = []  # keeps id()s of lifted constants unique
        self._names: set[str] = set(dir(fx.GraphModule))
        self._n = 0

    # -- constants ------------------------------------------------------------------------
    @staticmethod
    def is_const(ref: Ref) -> bool:
        return isinstance(ref, torch.Tensor)

    def const(self, ref: Ref) -> torch.Tensor | None:
        """The constant value of ``ref`` or None when it is only known at run time."""
        return ref if isinstance(ref, torch.Tensor) else None

    def ints(self, ref: Ref, what: str = "input") -> list[int]:
        """A constant 0-d/1-d integer input as a Python list (error if it is dynamic)."""
        t = self.const(ref)
        if t is None:
            raise ConversionError(f"{what} must be a constant for the torch backend, received a run-time value")
        return [int(v) for v in t.reshape(-1).tolist()]

    def floats(self, ref: Ref, what: str = "input") -> list[float]:
        t = self.const(ref)
        if t is None:
            raise ConversionError(f"{what} must be a constant for the torch backend, received a run-time value")
        return [float(v) for v in t.reshape(-1).tolist()]

    def unique_name(self, hint: str) -> str:
        base = sanitize(hint)
        name, i = base, 1
        while name in self._names:
            name = f"{base}_{i}"
            i += 1
        self._names.add(name)
        return name

    def lift(self, t: torch.Tensor, hint: str = "const") -> fx.Node:
        """Put a constant tensor into the module and return a get_attr node for it."""
        key = id(t)
        if key not in self._lifted:
            name = self.unique_name(f"_c_{hint}")
            self.root.register_buffer(name, t, persistent=False)
            self._keep.append(t)
            self._lifted[key] = self.graph.get_attr(name)
        return self._lifted[key]

    # -- emitting -------------------------------------------------------------------------
    def _to_graph_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            return self.lift(a)
        if isinstance(a, list | tuple):
            return type(a)(self._to_graph_arg(x) for x in a)
        if isinstance(a, dict):
            return {k: self._to_graph_arg(v) for k, v in a.items()}
        return a

    @staticmethod
    def _has_node(a: Any) -> bool:
        if isinstance(a, fx.Node):
            return True
        if isinstance(a, list | tuple):
            return any(LowerCtx._has_node(x) for x in a)
        if isinstance(a, dict):
            return any(LowerCtx._has_node(x) for x in a.values())
        return False

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Ref:
        """Emit ``fn(*args, **kwargs)``; evaluated now when every argument is constant."""
        if not self._has_node(args) and not self._has_node(kwargs):
            with torch.no_grad():
                out = fn(*args, **kwargs)
            if isinstance(out, torch.Tensor):
                return out
            if isinstance(out, list | tuple) and all(isinstance(o, torch.Tensor) for o in out):
                return tuple(out)
            if isinstance(out, bool | int | float):
                return torch.tensor(out)
            # a non-tensor result (e.g. torch.Size): keep it a graph call
        return self.graph.call_function(fn, self._to_graph_arg(args), self._to_graph_arg(kwargs))

    def module(self, mod: nn.Module, *args: Any, hint: str = "m") -> fx.Node:
        """Emit a call of a submodule (used for ops whose behaviour depends on train/eval)."""
        name = self.unique_name(hint)
        self.root.add_module(name, mod)
        return self.graph.call_module(name, self._to_graph_arg(args))

    # -- subgraphs (If / Loop / Scan bodies) ----------------------------------------------
    def subgraph(self, graph: ir.Graph) -> tuple[Subgraph, list[Ref]]:
        """Lower ``graph`` (a node attribute) into a callable module.

        Returns the module and the references of the outer-scope values it captures: call it
        as ``module(*formal_inputs, *captured)``; it returns a tuple of the graph's outputs.
        Constants of the enclosing scopes are folded into the subgraph; run-time values
        (and parameters, so that they keep receiving gradients) are passed in.
        """
        return lower_subgraph(self, graph)

    def inline(self, graph: ir.Graph) -> list[Ref]:
        """Lower the nodes of an input-less subgraph straight into this graph (an ``If``
        whose condition is known while lowering); returns the references of its outputs."""
        if len(graph.inputs):
            raise ConversionError(f"cannot inline a subgraph with {len(graph.inputs)} inputs")
        for value in graph.initializers.values():
            self.env[value] = to_torch(value.const_value.numpy())
        lower_nodes(self, graph)
        return [self.env[v] for v in graph.outputs]

    def unpack(self, ref: Ref, n: int) -> list[Ref]:
        """Split a multi-output result (tuple constant or fx node) into ``n`` references."""
        if isinstance(ref, tuple | list):
            return list(ref)[:n]
        return [self.graph.call_function(operator.getitem, (ref, i)) for i in range(n)]


def sanitize(name: str) -> str:
    """An IR name -> a valid Python attribute name."""
    s = re.sub(r"\W", "_", name)
    if not s or s[0].isdigit() or keyword.iskeyword(s):
        s = "_" + s
    return s


def attr(node: ir.Node, name: str, default: Any = None) -> Any:
    """The Python value of attribute ``name`` of ``node`` (``default`` when absent)."""
    a = node.attributes.get(name)
    if a is None:
        return default
    v = a.value
    if isinstance(v, ir.TensorProtocol):
        return torch.from_numpy(np.array(v.numpy()))
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, tuple | list) and not isinstance(v, str):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def to_torch(arr: np.ndarray) -> torch.Tensor:
    a = np.array(arr, copy=True)
    if a.dtype == np.uint16 or a.dtype == np.uint32:
        a = a.astype(np.int64)
    return torch.from_numpy(a)


def _is_initializer(v: ir.Value | None) -> bool:
    return v is not None and v.const_value is not None and v.is_initializer()


def _classify(graph: ir.Graph, frozen: Collection[str] = ()) -> dict[str, str]:
    """IR initializer name -> "param" | "buffer" | "const" (``frozen`` ones: const, never trained)."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in ir.traversal.RecursiveGraphIterator(graph):  # uses inside subgraphs count too
        for i, v in enumerate(node.inputs):
            if _is_initializer(v):
                uses.setdefault(v.name or "", []).append((node.op_type, i))
    kinds: dict[str, str] = {}
    for name, value in graph.initializers.items():
        used = uses.get(name)
        if not used:
            continue
        if value.dtype not in _FLOAT_IR or name in frozen:
            kinds[name] = "const"
            continue

        def is_pos(kind: str, op: str, pos: int) -> bool:
            entry = lookup(op)
            return entry is not None and pos in getattr(entry, kind)

        if all(is_pos("buffer_inputs", op, i) for op, i in used):
            kinds[name] = "buffer"
        elif all(is_pos("static_inputs", op, i) for op, i in used) or len(value.shape or ()) == 0:
            kinds[name] = "const"
        else:
            kinds[name] = "param"
    return kinds


def _check_supported(graph: ir.Graph, path: str | None = None) -> None:
    missing: dict[str, list[str]] = {}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        if node.domain not in ("", "ai.onnx") or lookup(node.op_type) is None:
            missing.setdefault(key, []).append(node.name or node.op_type)
    if missing:
        raise UnsupportedOpError(missing, framework="torch backend", path=path)


def _layer_label(node: ir.Node) -> str:
    src = source_of(node)
    name = node.name or (node.outputs[0].name if node.outputs else node.op_type)
    return f"{name} (from {src[0]})" if src else str(name)


def lower_graph(model: ir.Model) -> TorchModule:
    """Lower ``model`` to a TorchModule on the CPU (see ``lower``)."""
    graph = model.graph
    _check_supported(graph)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 18))
    root = nn.Module()
    fgraph = fx.Graph()
    ctx = LowerCtx(fgraph, root, opset)
    env = ctx.env
    inits = set(graph.initializers)

    input_names: list[str] = []
    for v in graph.inputs:
        if v.name in inits:
            continue
        input_names.append(v.name or "")
        env[v] = fgraph.placeholder(ctx.unique_name(f"in_{v.name}"))

    kinds = _classify(graph, frozen_names(model))
    param_ir_names: dict[str, str] = {}
    for name, value in graph.initializers.items():
        kind = kinds.get(name)
        if kind is None:
            continue
        t = to_torch(value.const_value.numpy())
        if kind == "const":
            env[value] = t
            continue
        tname = ctx.unique_name(name)
        if kind == "param":
            root.register_parameter(tname, nn.Parameter(t))
        else:
            root.register_buffer(tname, t)
        param_ir_names[tname] = name
        env[value] = fgraph.get_attr(tname)

    lower_nodes(ctx, graph)

    results = []
    for v in graph.outputs:
        r = env[v]
        results.append(ctx.lift(r, "out") if isinstance(r, torch.Tensor) else r)
    fgraph.output(results[0] if len(results) == 1 else tuple(results))
    # weight rearrangements (parameter-only expressions) computed once per parameter change
    # in inference, every call in training
    hoist_param_expressions(fgraph, root, ctx.unique_name("param_prep"))
    gm = fx.GraphModule(root, fgraph, class_name="PortanetGraph")
    log.debug(
        "lowered %d IR nodes to %d fx nodes; %d parameters/buffers",
        len(graph), len(fgraph.nodes), len(param_ir_names),
    )
    return TorchModule(gm, input_names, [v.name or "" for v in graph.outputs], param_ir_names)


def lower_nodes(ctx: LowerCtx, graph: ir.Graph) -> None:
    """Lower every node of ``graph`` into ``ctx`` (its inputs must already be in ctx.env)."""
    env = ctx.env
    for node in graph:
        entry = lookup(node.op_type)
        assert entry is not None
        args = [None if v is None or v.name == "" else env[v] for v in node.inputs]
        try:
            outs = entry.fn(ctx, node, *args)
        except PortanetError as exc:
            if isinstance(exc, ConversionError):
                raise exc.located(framework="torch backend", layer=_layer_label(node), layer_type=node.op_type) from None
            raise
        except (ValueError, TypeError, IndexError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise ConversionError(
                f"cannot lower: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                framework="torch backend",
                layer=_layer_label(node),
                layer_type=node.op_type,
            ) from exc
        if not isinstance(outs, list | tuple):
            outs = [outs]
        for v, r in zip(node.outputs, outs):
            env[v] = r


# -- subgraphs ------------------------------------------------------------------------------
class Subgraph(nn.Module):
    """A lowered ONNX subgraph: ``forward(*formal_inputs, *captured)`` -> tuple of outputs.

    Its lifted constants and nested subgraphs are submodules, so ``.to(device)`` and
    ``train()`` / ``eval()`` reach them through the enclosing module."""

    def __init__(self, graph_module: fx.GraphModule, n_inputs: int, n_outputs: int) -> None:
        super().__init__()
        self.gm = graph_module
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return self.gm(*args)

    def extra_repr(self) -> str:
        return f"inputs={self.n_inputs}, outputs={self.n_outputs}"


def free_values(graph: ir.Graph) -> list[ir.Value]:
    """Values ``graph`` (or a subgraph nested in it) reads from enclosing scopes, in order
    of first use."""
    defined: set[ir.Value] = set(graph.inputs) | set(graph.initializers.values())
    for node in graph:
        defined.update(node.outputs)
    free: dict[ir.Value, None] = {}

    def want(v: ir.Value | None) -> None:
        if v is not None and v.name != "" and v not in defined:
            free.setdefault(v, None)

    for node in graph:
        for v in node.inputs:
            want(v)
        for a in node.attributes.values():
            for sub in graphs_of(a):
                for v in free_values(sub):
                    want(v)
    for v in graph.outputs:
        want(v)
    return list(free)


def lower_subgraph(ctx: LowerCtx, graph: ir.Graph) -> tuple[Subgraph, list[Ref]]:
    """See ``LowerCtx.subgraph``."""
    root = nn.Module()
    fgraph = fx.Graph()
    sub = LowerCtx(fgraph, root, ctx.opset)
    for v in graph.inputs:
        sub.env[v] = fgraph.placeholder(sub.unique_name(f"in_{v.name}"))
    captured: list[Ref] = []
    for v in free_values(graph):
        if v not in ctx.env:
            raise ConversionError(f"subgraph '{graph.name}' reads '{v.name}', which no enclosing graph defines")
        ref = ctx.env[v]
        if isinstance(ref, fx.Node):
            sub.env[v] = fgraph.placeholder(sub.unique_name(f"outer_{v.name}"))
            captured.append(ref)
        else:  # a constant (or an omitted optional value): folded into the subgraph
            sub.env[v] = ref
    for value in graph.initializers.values():
        sub.env[value] = to_torch(value.const_value.numpy())
    lower_nodes(sub, graph)
    results = []
    for v in graph.outputs:
        r = sub.env[v]
        results.append(sub.lift(r, "out") if isinstance(r, torch.Tensor) else r)
    fgraph.output(tuple(results))
    gm = fx.GraphModule(root, fgraph, class_name="PortanetSubgraph")
    module = Subgraph(gm, len(graph.inputs), len(graph.outputs))
    return module, captured
