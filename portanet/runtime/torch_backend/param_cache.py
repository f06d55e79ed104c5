"""Cache the parts of a lowered graph that depend on parameters only.

Converted graphs often rearrange weights at run time: torch's exporter slices and
concatenates ``nn.LSTM``'s weights into ONNX's gate order, Keras importers transpose kernels,
and the recurrent lowering reorders ONNX gates back into torch's fused-kernel layout. Each
such expression reads nothing but parameters, buffers and constants, so during inference
its value only changes when a parameter does.

``hoist_param_expressions`` moves every such expression of the top-level fx graph into one
``ParamPrep`` submodule. ``ParamPrep`` recomputes it on every call while autograd may need
it (grad mode on and some parameter requiring grad: gradients must keep flowing to the
parameters while training), and otherwise returns the value it computed last, as long as
every parameter it read is still the same tensor storage at the same version counter (an
optimizer step, ``load_state_dict``, ``copy_`` or ``.to(device)`` all change one of them).
Numerics are identical: the cached value is exactly what the expression computed.
"""

from __future__ import annotations

import logging
import operator
from typing import Any

import torch
from torch import fx, nn

log = logging.getLogger(__name__)

#: call targets that must run on every call although their arguments are parameters only
_VOLATILE_NAMES = ("rand", "bernoulli", "multinomial", "dropout", "normal", "poisson", "uniform")


class ParamPrep(nn.Module):
    """Parameter-only expressions: ``forward(*leaves)`` -> tuple of their values (cached
    while no gradient is needed and the leaves are unchanged)."""

    def __init__(self, graph_module: fx.GraphModule, n_leaves: int, n_outputs: int) -> None:
        super().__init__()
        self.gm = graph_module
        self.n_leaves = n_leaves
        self.n_outputs = n_outputs
        self._key: tuple[Any, ...] | None = None
        self._value: tuple[Any, ...] | None = None

    def extra_repr(self) -> str:
        return f"leaves={self.n_leaves}, outputs={self.n_outputs}"

    @staticmethod
    def _state(leaves: tuple[torch.Tensor, ...]) -> tuple[Any, ...] | None:
        # storage identity + version counter of every leaf; None: not cacheable
        try:
            return tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape), tuple(t.stride()))
                         for t in leaves)
        except RuntimeError:  # inference-mode tensors have no version counter
            return None

    def forward(self, *leaves: torch.Tensor) -> tuple[Any, ...]:
        if torch.is_grad_enabled() and any(t.requires_grad for t in leaves):
            self._key = self._value = None  # training: drop a stale cache, recompute every call
            return self.gm(*leaves)
        key = self._state(leaves)
        if key is not None and key == self._key and self._value is not None:
            return self._value
        value = self.gm(*leaves)
        if key is not None:
            self._key, self._value = key, value
        return value


def _volatile(node: fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target)).lower()
    return any(v in name for v in _VOLATILE_NAMES)


def hoist_param_expressions(graph: fx.Graph, root: nn.Module, name: str = "param_prep") -> int:
    """Move the parameter-only expressions of ``graph`` into one ``ParamPrep`` submodule of
    ``root`` (in place); returns the number of fx nodes moved."""
    static: set[fx.Node] = set()
    leaves: list[fx.Node] = []
    for node in graph.nodes:
        if node.op == "get_attr":
            static.add(node)
        elif node.op in ("call_function", "call_method") and not _volatile(node):
            args = node.all_input_nodes
            if args and all(a in static for a in args):
                static.add(node)
    computed = [n for n in graph.nodes if n in static and n.op != "get_attr"]
    # the values the rest of the graph reads: computed static nodes with a non-static user
    frontier = [n for n in computed if any(u not in static for u in n.users)]
    if not frontier:
        return 0
    # only what the frontier needs moves (unused static nodes stay for dead-code elimination)
    needed: set[fx.Node] = set()
    stack = list(frontier)
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    moved = [n for n in computed if n in needed]
    leaves = [n for n in graph.nodes if n.op == "get_attr" and n in needed]

    sub = fx.Graph()
    remap: dict[fx.Node, fx.Node] = {}
    for leaf in leaves:
        remap[leaf] = sub.placeholder(str(leaf.target).replace(".", "_"))
    for n in moved:
        remap[n] = sub.node_copy(n, lambda a: remap[a])
    sub.output(tuple(remap[n] for n in frontier))
    sub_gm = fx.GraphModule(nn.Module(), sub, class_name="PortanetParamPrep")
    root.add_module(name, ParamPrep(sub_gm, len(leaves), len(frontier)))

    # the call goes right before the first node that reads a frontier value; leaves lifted
    # later than that move up (a get_attr reads nothing, so it may stand anywhere earlier)
    index = {n: i for i, n in enumerate(graph.nodes)}
    first_user = min((u for n in frontier for u in n.users if u not in static), key=index.__getitem__)
    with graph.inserting_before(first_user):
        call = graph.call_module(name, tuple(leaves))
        outs = [graph.call_function(operator.getitem, (call, i)) for i in range(len(frontier))]
    for leaf in leaves:
        if index[leaf] > index[first_user]:
            call.prepend(leaf)
    for n, out in zip(frontier, outs):
        n.replace_all_uses_with(out, delete_user_cb=lambda u: u not in static)
    # the moved nodes (and static nodes nothing reads) are now dead here; pure, so erased
    for n in reversed(computed):
        if not n.users:
            graph.erase_node(n)
    log.debug("hoisted %d parameter-only fx nodes (%d leaves, %d values) into %s",
              len(moved), len(leaves), len(frontier), name)
    return len(moved)

