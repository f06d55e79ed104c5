"""Provenance: which source layer each IR node came from (node metadata_props)."""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

SOURCE_KEY = "portanet.source"
SOURCE_TYPE_KEY = "portanet.source_type"


def source_of(node: ir.Node) -> tuple[str, str] | None:
    """(source layer name, source layer type) of ``node``, or None if it has none."""
    name = node.metadata_props.get(SOURCE_KEY)
    if name is None:
        return None
    return name, node.metadata_props.get(SOURCE_TYPE_KEY, "")


def set_source(node: ir.Node, layer: str, layer_type: str) -> None:
    node.metadata_props[SOURCE_KEY] = layer
    node.metadata_props[SOURCE_TYPE_KEY] = layer_type


def nodes_by_source(graph: ir.Graph) -> dict[str, list[ir.Node]]:
    """Source layer name -> IR nodes lowered from it, in graph order."""
    out: dict[str, list[ir.Node]] = {}
    for node in graph:
        src = source_of(node)
        if src is not None:
            out.setdefault(src[0], []).append(node)
    return out


def last_value_of_layer(graph: ir.Graph, layer: str) -> ir.Value | None:
    """The IR value that corresponds to the output of source ``layer``: the first output
    of the last node (in topological order) that carries that provenance."""
    nodes = nodes_by_source(graph).get(layer)
    if not nodes:
        return None
    return nodes[-1].outputs[0]


def provenance_summary(graph: ir.Graph) -> dict[str, object]:
    """Counts for `inspect`: nodes with/without provenance and source types seen."""
    with_src = 0
    types: Counter[str] = Counter()
    layers: set[str] = set()
    total = 0
    for node in graph:
        total += 1
        src = source_of(node)
        if src is not None:
            with_src += 1
            layers.add(src[0])
            types[src[1]] += 1
    return {
        "nodes": total,
        "nodes_with_provenance": with_src,
        "source_layers": len(layers),
        "source_types": dict(types.most_common()),
    }
