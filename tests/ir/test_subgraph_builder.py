"""SubgraphBuilder: a Scan body built with the builder's calls runs on ONNX Runtime and the
torch backend; its constants live in the main graph (outer-scope values) and names stay unique."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from portanet.ir.builder import BATCH, GraphBuilder, SubgraphBuilder
from portanet.runtime.session import Session


def _running_sum_model() -> ir.Model:
    """y_t = tanh(y_{t-1} * w + x_t) over axis 1 of x (N, T, 3); w a main-graph initializer."""
    b = GraphBuilder("test", name="scan")
    x = b.add_input("x", [BATCH, "T", 3])
    with b.layer("cell", "Test"):
        w = b.initializer("w", np.array([0.5, -1.0, 2.0], np.float32))
        h0 = b.op("Expand", [b.const(np.float32(0.1)), b.op("Concat", [b.op("Shape", [x], {"start": 0, "end": 1}),
                                                                         b.const(np.array([3], np.int64))],
                                                                  {"axis": 0})])
        body = SubgraphBuilder(b, name="cell_step")
        h = body.add_input("h", [BATCH, 3])
        x_t = body.add_input("x_t", [BATCH, 3])
        y = body.op("Tanh", [body.op("Add", [body.op("Mul", [h, w]), x_t])])
        one = body.const(np.float32(1.0))  # goes to the main graph
        body.add_output(y)
        body.add_output(body.op("Mul", [y, one]))
        body.add_output(x_t)  # a body input as an output: through an Identity
        attrs = {"body": ir.AttrGraph("body", body.graph()), "num_scan_inputs": 1, "scan_input_axes": [1],
                 "scan_output_axes": [1, 1]}
        final, seq, echo = b.op("Scan", [h0, x], attrs, outputs=3)
    b.add_output(final, "final")
    b.add_output(seq, "seq")
    b.add_output(echo, "echo")
    model = b.build()
    assert {v.name for v in model.graph.initializers.values()} >= {"w"}
    assert not body.initializers  # constants live in the main graph
    names = [v.name for n in model.graph for v in n.outputs] + [v.name for v in body.nodes[0].outputs]
    assert len(names) == len(set(names))
    return model


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_scan_body_from_subgraph_builder(backend: str):
    if backend == "torch":
        pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    out = Session(_running_sum_model(), backend=backend).run({"x": x})
    h = np.full((2, 3), 0.1)
    ref = []
    for t in range(4):
        h = np.tanh(h * np.array([0.5, -1.0, 2.0]) + x[:, t])
        ref.append(h)
    ref = np.stack(ref, 1)
    np.testing.assert_allclose(out["seq"], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["final"], ref[:, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["echo"], x)
