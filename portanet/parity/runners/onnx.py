"""ONNX reference runner: the source ``.onnx`` file on onnx's reference evaluator
(``onnx.reference.ReferenceEvaluator``, a numpy implementation independent of ONNX Runtime
and of portanet's torch backend).

An ONNX source's layers are its nodes: provenance names a node, and the layer's output is
that node's first output. Named nodes inside If/Loop/Scan subgraphs are layers too: their
values are read from a probe copy of the model (``portanet.ir.probes``), a Loop/Scan body's
value as every iteration flattened and stacked, an If branch's only when the branch ran.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from portanet.errors import InvalidInputError


def _source_path(sources: Any) -> Path:
    items = list(sources) if isinstance(sources, list | tuple) else [sources]
    paths = [Path(p) for p in items if isinstance(p, str | os.PathLike) and str(p).lower().endswith(".onnx")]
    if len(paths) != 1:
        raise InvalidInputError("the ONNX reference runner takes one .onnx source file")
    return paths[0]


class _Prepared:
    """The source loaded once: evaluator plus node name -> first output name."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        from portanet.ir.io import read_onnx_proto

        proto = read_onnx_proto(path)
        if any(t.data_location == 1 for t in proto.graph.initializer):  # external data
            proto = onnx.load(str(path))
        self.path = path
        self.outputs = [o.name for o in proto.graph.output]
        self.node_outputs: dict[str, str] = {}
        self.layer_last: dict[str, str] = {}
        for i, node in enumerate(proto.graph.node):
            name = node.name or f"{node.op_type}_{i}"  # the names the ONNX importer gives unnamed nodes
            if node.output:
                self.node_outputs[name] = node.output[0]
        # a file portanet wrote keeps its original provenance (a PyTorch module path, a Caffe
        # layer): such a layer's output is the first output of its last node
        for node in proto.graph.node:
            src = next((p.value for p in node.metadata_props if p.key == "portanet.source"), None)
            if src is not None and node.output and src not in self.node_outputs:
                self.layer_last[src] = node.output[0]
        for k, v in self.layer_last.items():
            self.node_outputs.setdefault(k, v)
        # nodes inside If/Loop/Scan subgraphs: read through a probe copy of the model; a
        # layer's output is the first output of its last node, as for top-level layers
        from portanet.ir.probes import inner_values, walk

        self.inner = set(inner_values(proto))
        inner_last: dict[str, str] = {}
        for node, parents in walk(proto.graph):
            src = next((p.value for p in node.metadata_props if p.key == "portanet.source"), node.name)
            if parents and src and node.output and node.output[0]:
                inner_last[src] = node.output[0]
        for k, v in inner_last.items():
            self.node_outputs.setdefault(k, v)
        self.proto = proto
        self.evaluator = ReferenceEvaluator(proto)


def prepare(sources: Any, options: Mapping[str, Any] | None = None) -> _Prepared:
    """Load the source file once for several runs."""
    return sources if isinstance(sources, _Prepared) else _Prepared(_source_path(sources))


def run_reference(
    sources: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Outputs under the source's output names, plus each requested layer's output (a node's
    name, or a ``portanet.source`` provenance name the file carries)."""
    prep = prepare(sources, options)
    wanted = [n for n in layers or [] if n in prep.node_outputs]
    inner = [prep.node_outputs[n] for n in wanted if prep.node_outputs[n] in prep.inner]
    evaluator, mapping = prep.evaluator, {}
    if inner:  # values inside subgraphs leave them as extra outputs of a probe copy
        from onnx.reference import ReferenceEvaluator

        from portanet.ir.probes import expose_inner_values

        probe, mapping = expose_inner_values(prep.proto, inner)
        evaluator = ReferenceEvaluator(probe)
    names = prep.outputs + [mapping.get(prep.node_outputs[n], prep.node_outputs[n]) for n in wanted]
    values = evaluator.run(names, dict(feeds))
    result = {n: np.asarray(v) for n, v in zip(prep.outputs, values)}
    for layer, v in zip(wanted, values[len(prep.outputs):]):
        arr = np.asarray(v)
        if prep.node_outputs[layer] in prep.inner and arr.size == 0 and arr.ndim == 1:
            continue  # an If branch that did not run: the layer has no output this time
        result[layer] = arr
    return result
