"""Rewrites that make a saved ONNX file mean the same thing in every consumer.

Applied by ``save_onnx`` to the serialized graph (the in-memory IR is left as it is):

* ``AveragePool`` with ``count_include_pad=1`` and non-zero ``pads`` becomes an explicit
  zero ``Pad`` followed by an ``AveragePool`` without pads. Both divide every window by
  the cells inside the padded extent, so the numbers are identical; but OpenCV's DNN module ignores
  ``count_include_pad=1`` and divides by the real cells only, which gave wrong results for
  Caffe average pooling with padding, Caffe LRN ``WITHIN_CHANNEL``, CNTK pooling that counts
  padding, and PyTorch's ``AvgPool2d(padding=...)``. Pools with ``ceil_mode=1`` stay as they
  are: whether a last, overhanging window exists depends on where the padding sits, so
  moving it into a ``Pad`` could change the output size (rare; no zoo model has it).
* ``Constant`` nodes written with ``value_float(s)`` / ``value_int(s)`` (torch.onnx's habit)
  get the same data as a ``value`` tensor, the only form OpenCV's DNN module reads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _unique(base: str, used: set[str]) -> str:
    name, i = base, 1
    while name in used:
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name


def explicit_average_pool_pads(graph: onnx.GraphProto, opset: int) -> int:
    """Rewrite ``AveragePool(count_include_pad=1, pads=p)`` as ``Pad(p) -> AveragePool``
    in ``graph`` (in place); returns how many nodes were rewritten."""
    used = {n.name for n in graph.node} | {o for n in graph.node for o in n.output}
    used |= {i.name for i in graph.input} | {t.name for t in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        attrs = _attrs(node)
        pads = [int(p) for p in attrs.get("pads", [])]
        if (
            node.op_type != "AveragePool"
            or node.domain not in ("", "ai.onnx")
            or not attrs.get("count_include_pad", 0)
            or not any(pads)
            or attrs.get("ceil_mode", 0)  # the last-window rule counts the pads: sizes would change
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
        ):
            new_nodes.append(node)
            continue
        k = len(pads) // 2
        # ONNX Pad pads every axis: (N, C) unpadded, then the pool's begin and end pads
        full = [0, 0, *pads[:k], 0, 0, *pads[k:]]
        padded = _unique(f"{node.output[0]}_padded", used)
        pad_name = _unique(f"{node.name or node.output[0]}_pad", used)
        if opset >= 11:
            amounts = _unique(f"{pad_name}_amounts", used)
            graph.initializer.append(numpy_helper.from_array(np.asarray(full, dtype=np.int64), amounts))
            pad = helper.make_node("Pad", [node.input[0], amounts], [padded], name=pad_name, mode="constant")
        else:
            pad = helper.make_node("Pad", [node.input[0]], [padded], name=pad_name, mode="constant", pads=full)
        pad.metadata_props.extend(node.metadata_props)
        attrs.pop("pads")
        attrs["count_include_pad"] = 0  # nothing left to count: the padding is real cells now
        pool = helper.make_node("AveragePool", [padded], list(node.output), name=node.name, **attrs)
        pool.metadata_props.extend(node.metadata_props)
        new_nodes += [pad, pool]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    for node in graph.node:  # subgraphs (If / Loop / Scan bodies)
        for a in node.attribute:
            if a.HasField("g"):
                count += explicit_average_pool_pads(a.g, opset)
            for g in a.graphs:
                count += explicit_average_pool_pads(g, opset)
    return count


_CONSTANT_LISTS = {
    "value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64,
}


def constant_tensors(graph: onnx.GraphProto) -> int:
    """``Constant(value_float(s)/value_int(s)=v)`` -> ``Constant(value=tensor(v))`` in place;
    returns how many nodes changed (subgraphs included)."""
    count = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            a = node.attribute[0]
            if a.name in _CONSTANT_LISTS:
                arr = np.asarray(helper.get_attribute_value(a), dtype=_CONSTANT_LISTS[a.name])
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(arr)))
                count += 1
        for a in node.attribute:
            if a.HasField("g"):
                count += constant_tensors(a.g)
            for g in a.graphs:
                count += constant_tensors(g)
    return count


def make_portable(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Apply every portability rewrite to ``proto`` in place; returns ``proto``."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    explicit_average_pool_pads(proto.graph, opset)
    constant_tensors(proto.graph)
    return proto
