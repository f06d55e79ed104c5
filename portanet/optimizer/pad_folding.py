"""Pad folded into the pads of the Conv / AveragePool / MaxPool that consumes it.

A constant-mode Pad that pads only spatial dims with non-negative amounts is the same as
the consumer's own zero padding: exact for Conv; for AveragePool when padded zeros are
counted (``count_include_pad=1``, or the pool had no pads of its own); for MaxPool only
when the padding value is -inf, or 0 and the input comes from a Relu (every window holds
a real value >= 0, so a 0 can never win). The consumer must have ``auto_pad=NOTSET``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from portanet.optimizer._util import (
    attr,
    const_array,
    copy_provenance,
    int_list_input,
    only_consumer,
    rank_of,
    set_attr,
)
from portanet.optimizer.base import OptimizerPass, register_pass

CONSUMERS = ("Conv", "AveragePool", "MaxPool")


def _pad_value(pad: ir.Node) -> float | None:
    if len(pad.inputs) > 2 and pad.inputs[2] is not None:
        v = const_array(pad.inputs[2])
        return None if v is None or v.size != 1 else float(v.reshape(-1)[0])
    return 0.0


def _spatial_pads(pad: ir.Node, r: int) -> list[int] | None:
    """The Pad's amounts as ONNX ``pads`` for the spatial dims (begin..., end...), if the
    batch and channel dims are not padded; None otherwise."""
    pads = int_list_input(pad, 1)
    if pads is None:
        return None
    axes = int_list_input(pad, 3) if len(pad.inputs) > 3 and pad.inputs[3] is not None else list(range(r))
    if axes is None or len(pads) != 2 * len(axes):
        return None
    full = [0] * (2 * r)
    for k, ax in enumerate(axes):
        ax = ax + r if ax < 0 else ax
        full[ax], full[ax + r] = pads[k], pads[k + len(axes)]
    if any(p < 0 for p in full) or full[0] or full[1] or full[r] or full[r + 1]:
        return None
    return full[2:r] + full[r + 2:]


@register_pass
class FoldPad(OptimizerPass):
    name = "fold_pad"
    level = 1
    order = 45

    def run(self, graph: ir.Graph) -> bool:
        modified = False
        for pad in list(graph):
            if pad.op_type != "Pad" or pad.domain != "" or pad.graph is not graph:
                continue
            if attr(pad, "mode", "constant") != "constant":
                continue
            x = pad.inputs[0]
            r = rank_of(x)
            consumer = only_consumer(pad.outputs[0])
            if r is None or r < 3 or consumer is None or consumer.op_type not in CONSUMERS:
                continue
            if consumer.inputs[0] is not pad.outputs[0] or attr(consumer, "auto_pad", "NOTSET") != "NOTSET":
                continue
            spatial = _spatial_pads(pad, r)
            value = _pad_value(pad)
            if spatial is None or value is None or not self._exact(consumer, x, value):
                continue
            own = attr(consumer, "pads", [0] * (2 * (r - 2)))
            merged = [int(a + b) for a, b in zip(own, spatial)]
            kernel = attr(consumer, "kernel_shape", [])
            if consumer.op_type != "Conv" and any(p >= kernel[i % len(kernel)] for i, p in enumerate(merged)):
                continue  # pooling pads must stay smaller than the window
            set_attr(consumer, "pads", merged)
            if consumer.op_type == "AveragePool":
                set_attr(consumer, "count_include_pad", 1)
            consumer.replace_input_with(0, x)
            copy_provenance(consumer, pad)
            graph.remove(pad, safe=True)
            modified = True
        return modified

    @staticmethod
    def _exact(consumer: ir.Node, x: ir.Value, value: float) -> bool:
        op = consumer.op_type
        if op == "Conv":
            return value == 0.0
        if op == "AveragePool":
            own = attr(consumer, "pads", None)
            if attr(consumer, "ceil_mode", 0):
                return False  # the divisor of windows overhanging the edge would differ
            return value == 0.0 and (attr(consumer, "count_include_pad", 0) == 1 or not own or not any(own))
        # MaxPool: the second output (indices) would change meaning
        if len(consumer.outputs) > 1 and (consumer.outputs[1].uses() or consumer.outputs[1].is_graph_output()):
            return False
        if value == -np.inf:
            return True
        prod = x.producer()
        return value == 0.0 and prod is not None and prod.op_type == "Relu"
