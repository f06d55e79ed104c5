"""First-divergence bisection: which source layer is the first whose IR value differs?

Every source layer maps (through provenance) to the first output of the last IR node that
carries its name. Layers computed only inside If branches and Loop/Scan bodies come right
before the node that holds them; their values are read through ``portanet.ir.probes`` (a
loop body's value as every iteration, flattened and stacked) and compared where the
reference returns the same form (an ONNX source, read through the same rewrite). Layers are
walked in topological order in chunks of ``chunk`` layers: for each chunk the backend runs
the model with those values as extra outputs and the reference runner returns the same
layers, the chunk is compared and freed, and the walk stops at the first chunk holding a
divergent layer. At most ``chunk`` intermediate tensors per side are alive at once, whatever
the size of the network.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet.ir.builder import graphs_of
from portanet.ir.io import atomic_write_bytes, save_onnx
from portanet.ir.provenance import source_of
from portanet.parity.compare import TensorStats, compare

log = logging.getLogger(__name__)

#: intermediate tensors compared per step (per side): the memory bound of a bisection
DEFAULT_CHUNK = 16
#: node metadata the optimizer writes when it folds source layers into a node
FUSED_KEY = "portanet.fused"


@dataclass
class LayerPoint:
    """A source layer and the IR value holding its output."""

    layer: str
    layer_type: str
    value: ir.Value
    nodes: list[ir.Node]
    #: the value is computed inside an If/Loop/Scan subgraph (read through ``portanet.ir.probes``)
    inner: bool = False


@dataclass
class BisectResult:
    """Outcome of a bisection on one backend."""

    backend: str
    #: layers compared (the reference could produce them) out of the candidates
    compared: int
    candidates: int
    layer: str | None = None
    layer_type: str | None = None
    value_name: str | None = None
    #: the IR nodes lowered from that layer: op types and attributes
    nodes: list[dict[str, Any]] = field(default_factory=list)
    stats: TensorStats | None = None
    #: the last layer that still matched (None when the first compared layer diverges)
    last_good: str | None = None
    repro: dict[str, str] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.layer is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "compared": self.compared,
            "candidates": self.candidates,
            "layer": self.layer,
            "layer_type": self.layer_type,
            "value": self.value_name,
            "nodes": self.nodes,
            "stats": self.stats.as_dict() if self.stats else None,
            "last_good": self.last_good,
            "repro": self.repro,
        }


def layer_points(model: ir.Model, *, hierarchical: bool = False) -> list[LayerPoint]:
    """Source layers in topological order of their last node, each with its output value.

    ``hierarchical`` (PyTorch module paths): a module's output is the last node of its whole
    subtree (``layer1.0`` ends with ``layer1.0.relu``), and when several modules share one
    value only the innermost is kept. Layers whose value is not a float tensor (shape
    arithmetic), a graph input or a constant are left out, and so are layers the optimizer
    folded together (``portanet.fused``): their IR values match no single source layer.
    """
    last: dict[str, tuple[int, ir.Node]] = {}
    own: dict[str, list[ir.Node]] = {}
    types: dict[str, str] = {}
    # layers the optimizer folded into another node (Conv+BatchNormalization, Pad into Conv)
    # no longer have a value of their own, and the node they were folded into holds a mix
    folded: set[str] = set()
    for node in model.graph:
        folded.update(n for n in node.metadata_props.get(FUSED_KEY, "").split(",") if n)
    for i, node in enumerate(model.graph):
        src = source_of(node)
        if src is None or not node.outputs:
            continue
        if FUSED_KEY in node.metadata_props or src[0] in folded:
            continue
        own.setdefault(src[0], []).append(node)
        types.setdefault(src[0], src[1])
        names = [src[0]]
        if hierarchical:
            parts = src[0].split(".")
            names = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
        for name in names:
            last[name] = (i, node)
    by_value: dict[int, str] = {}
    for name, (i, _node) in last.items():
        keep = by_value.get(i)
        # the innermost (longest path) module names a value shared with its containers
        if keep is None or (name in own and (keep not in own or len(name) > len(keep))):
            by_value[i] = name
    out = []
    inner = _inner_points(model, set(last) | folded)
    for i, name in sorted(by_value.items()):
        out.extend(inner.pop(i, []))  # layers computed inside node i's subgraphs come first
        node = last[name][1]
        v = node.outputs[0]
        if node.op_type == "Constant" or v.const_value is not None:
            continue
        if v.dtype is not None and not v.dtype.is_floating_point():
            continue
        nodes = own.get(name) or [node]
        out.append(LayerPoint(name, types.get(name, ""), v, nodes))
    for i in sorted(inner):
        out.extend(inner[i])
    return out


def _inner_points(model: ir.Model, outer: set[str]) -> dict[int, list[LayerPoint]]:
    """Index of a top-level node -> the layers computed only inside its subgraphs (If
    branches, Loop/Scan bodies), in execution order, each at the output of its last node."""
    result: dict[int, list[LayerPoint]] = {}
    for i, top in enumerate(model.graph):
        subgraphs = [g for a in top.attributes.values() for g in graphs_of(a)]
        if not subgraphs:
            continue
        last: dict[str, ir.Node] = {}
        own: dict[str, list[ir.Node]] = {}
        types: dict[str, str] = {}
        for g in subgraphs:
            for node in ir.traversal.RecursiveGraphIterator(g):
                src = source_of(node)
                if src is None or not node.outputs or src[0] in outer or node.op_type == "Constant":
                    continue
                last.pop(src[0], None)  # re-inserted: dict order = order of the last nodes
                last[src[0]] = node
                own.setdefault(src[0], []).append(node)
                types.setdefault(src[0], src[1])
        points = []
        for name, node in last.items():
            v = node.outputs[0]
            if not v.name or (v.dtype is not None and not v.dtype.is_floating_point()):
                continue
            points.append(LayerPoint(name, types[name], v, own[name], inner=True))
        if points:
            result[i] = points
    return result


def run_with_outputs(
    model: ir.Model, backend: str, feeds: Mapping[str, np.ndarray], values: Sequence[ir.Value], device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Run ``model`` on ``backend`` with ``values`` as extra graph outputs (restored afterwards).

    Values computed inside subgraphs are read from a copy of the model in which they leave
    their If/Loop/Scan nodes as extra outputs (``portanet.ir.probes``): a Loop/Scan body's
    value of every iteration, flattened and stacked; an If branch's value, empty when the
    branch did not run.
    """
    from portanet.runtime.session import Session

    inner = [v for v in values if v.producer() is not None and v.producer().graph is not model.graph]
    if inner:
        return _run_with_inner_outputs(model, backend, feeds, values, inner, device)
    outputs = model.graph.outputs
    added = []
    for v in values:
        if v not in outputs:
            if v.type is None:
                v.type = ir.TensorType(ir.DataType.FLOAT)
            outputs.append(v)
            added.append(v)
    try:
        session = Session(model, backend=backend, device=device)
        result = session.run(feeds, [v.name or "" for v in values])
    finally:
        for v in added:
            outputs.remove(v)
    return result


def _run_with_inner_outputs(model: ir.Model, backend: str, feeds: Mapping[str, np.ndarray],
                            values: Sequence[ir.Value], inner: Sequence[ir.Value], device: str) -> dict[str, np.ndarray]:
    from onnx import helper

    from portanet.ir.probes import expose_inner_values
    from portanet.runtime.session import Session

    proto, mapping = expose_inner_values(ir.serde.serialize_model(model), [v.name or "" for v in inner])
    present = {o.name for o in proto.graph.output}
    for v in values:
        if v not in inner and v.name not in present:
            elem = int(v.dtype) if v.dtype is not None else int(ir.DataType.FLOAT)
            proto.graph.output.append(helper.make_tensor_value_info(v.name, elem, None))
    probe = ir.serde.deserialize_model(proto)
    names = {v.name or "": mapping.get(v.name or "", v.name or "") for v in values}
    out = Session(probe, backend=backend, device=device).run(feeds, list(names.values()))
    return {name: out[probed] for name, probed in names.items()}


def bisect(
    model: ir.Model,
    reference: Callable[[Sequence[str]], Mapping[str, np.ndarray]],
    feeds: Mapping[str, np.ndarray],
    *,
    backend: str = "ort",
    rtol: float,
    atol: float,
    chunk: int = DEFAULT_CHUNK,
    device: str = "cpu",
    hierarchical: bool = False,
) -> BisectResult:
    """Find the first source layer whose IR value diverges from ``reference(layers)``.

    ``reference`` runs the source on ``feeds`` and returns the outputs of the requested layers
    (leaving out any it cannot produce). Layers are judged by the scale-relative test
    (see ``portanet.parity.compare``); if none fails it, the first layer failing the
    element-wise test is reported instead.
    """
    points = layer_points(model, hierarchical=hierarchical)
    result = BisectResult(backend=backend, compared=0, candidates=len(points))
    first_elementwise: tuple[LayerPoint, TensorStats] | None = None
    last_good: str | None = None
    for start in range(0, len(points), max(1, chunk)):
        part = points[start:start + chunk]
        ref = reference([p.layer for p in part])
        usable = [p for p in part if p.layer in ref]
        if not usable:
            continue
        got = run_with_outputs(model, backend, feeds, [p.value for p in usable], device)
        for p in usable:
            if p.inner and np.shape(ref[p.layer]) != np.shape(got[p.value.name or ""]):
                # a subgraph value read differently by the reference (one step of a loop rather
                # than every iteration stacked, a branch that did not run): not comparable
                continue
            result.compared += 1
            stats = compare(ref[p.layer], got[p.value.name or ""], rtol=rtol, atol=atol, elementwise=False)
            if not stats.passed:
                _fill(result, p, stats, last_good)
                return result
            if first_elementwise is None:
                strict = compare(ref[p.layer], got[p.value.name or ""], rtol=rtol, atol=atol)
                if not strict.passed:
                    first_elementwise = (p, strict)
            last_good = p.layer
        del ref, got  # keep at most one chunk of intermediates alive
    if first_elementwise is not None:
        _fill(result, first_elementwise[0], first_elementwise[1], None)
    return result


def _attr_value(attr: ir.Attr) -> Any:
    value = attr.value
    if isinstance(value, ir.TensorProtocol):
        return f"tensor{list(value.shape)}"
    if isinstance(value, ir.Graph):
        return "graph"
    if isinstance(value, list | tuple):
        return [v if isinstance(v, int | float | str) else str(v) for v in value]
    return value if isinstance(value, int | float | str) else str(value)


def describe_nodes(nodes: Sequence[ir.Node]) -> list[dict[str, Any]]:
    """Op type, attributes and weight shapes of the IR nodes of one layer."""
    out = []
    for n in nodes:
        if n.op_type == "Constant":
            continue
        weights = {v.name: list(v.shape) for v in n.inputs
                   if v is not None and v.is_initializer() and v.shape is not None}
        out.append({
            "node": n.name,
            "op": n.op_type,
            "attributes": {k: _attr_value(a) for k, a in n.attributes.items()},
            "weights": weights,
        })
    return out


def _fill(result: BisectResult, p: LayerPoint, stats: TensorStats, last_good: str | None) -> None:
    result.layer = p.layer
    result.layer_type = p.layer_type
    result.value_name = p.value.name
    result.nodes = describe_nodes(p.nodes)
    result.stats = stats
    result.last_good = last_good


def prefix_model(model: ir.Model, value_name: str) -> ir.Model:
    """A copy of ``model`` whose only output is ``value_name``, pruned to the nodes it needs
    (a value inside a subgraph: the output its If/Loop/Scan node gives it, see
    ``portanet.ir.probes``)."""
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    proto = ir.serde.serialize_model(model)
    if not any(v.name == value_name for node in model.graph for v in node.outputs):
        # a value inside a subgraph: first make it an output of its If/Loop/Scan nodes
        from portanet.ir.probes import expose_inner_values

        proto, mapping = expose_inner_values(proto, [value_name])
        value_name = mapping.get(value_name, value_name)
    copy = ir.serde.deserialize_model(proto)
    target = None
    for node in copy.graph:
        for v in node.outputs:
            if v.name == value_name:
                target = v
    if target is None:
        raise KeyError(value_name)
    if target.type is None:
        target.type = ir.TensorType(ir.DataType.FLOAT)
    copy.graph.outputs.clear()
    copy.graph.outputs.append(target)
    RemoveUnusedNodesPass()(copy)
    # inputs the prefix does not read stay (an ONNX input may be unused); initializers go
    for name in [n for n, v in copy.graph.initializers.items() if not v.uses()]:
        del copy.graph.initializers[name]
    return copy


def write_repro(
    model: ir.Model,
    result: BisectResult,
    feeds: Mapping[str, np.ndarray],
    expected: np.ndarray,
    out_dir: str | Path,
) -> dict[str, str]:
    """Write ``repro.onnx`` (the model up to the divergent layer), ``repro_inputs.npz`` (its
    inputs) and ``repro_expected.npz`` (the source layer's output); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sub = prefix_model(model, result.value_name or "")
    onnx_path = out / "repro.onnx"
    save_onnx(sub, onnx_path)
    used = {v.name for v in sub.graph.inputs}
    paths = {"model": str(onnx_path)}
    for fname, arrays in (("repro_inputs.npz", {k: v for k, v in feeds.items() if k in used}),
                          ("repro_expected.npz", {sub.graph.outputs[0].name or "output": expected})):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(out / fname, buf.getvalue())
        paths[fname.split("_")[1].split(".")[0]] = str(out / fname)
    return paths
