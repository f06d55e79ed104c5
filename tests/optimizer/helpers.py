"""Graph builders and the equivalence check shared by the optimizer tests.

The reference outputs come from ONNX Runtime on the unoptimized graph (or from the source
framework in the exporter tests), never from portanet's own evaluation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from portanet.optimizer import optimize_with_report

RTOL = 1e-5
ATOL = 1e-5
F = TensorProto.FLOAT


def tensor_input(name: str, dims: Sequence[int | str], dtype: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(dims))


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def make(nodes, inputs, outputs, initializers=(), opset: int = 18) -> onnx.ModelProto:
    """An ONNX model; outputs given as names get a float type with unknown shape."""
    outs = []
    for o in outputs:
        if isinstance(o, tuple):  # (name, dims): a float output with a declared shape
            o = helper.make_tensor_value_info(o[0], F, list(o[1]))
        elif isinstance(o, str):
            o = helper.make_tensor_value_info(o, F, None)
        outs.append(o)
    graph = helper.make_graph(list(nodes), "g", list(inputs), outs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def rand(*shape: int, seed: int = 0, positive: bool = False) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.5 if positive else a


def ort_run(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def feeds_for(proto: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    inits = {i.name for i in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def ops(model: ir.Model) -> Counter[str]:
    return Counter(n.op_type for n in model.graph)


def _dims(v: ir.Value) -> list:
    return [d if isinstance(d, int) else d.value for d in v.shape] if v.shape is not None else None


def check_pass(
    proto: onnx.ModelProto,
    passes: Sequence[str] | None,
    *,
    fires: bool,
    level: int = 2,
    feeds: list[dict[str, np.ndarray]] | None = None,
) -> ir.Model:
    """Optimize ``proto`` with ``passes`` (shape inference first) under the guard and check:
    whether the passes fired, outputs equal ORT's on the original (batch 2 and 3, rtol 1e-5),
    a second run changes nothing, and input/output dims (symbolic batch) are unchanged."""
    model = ir.serde.deserialize_model(proto)
    in_dims = {v.name: _dims(v) for v in model.graph.inputs}
    out_dims = [_dims(v) for v in model.graph.outputs]
    names = None if passes is None else ["shape_inference", *passes]
    result = optimize_with_report(model, level, names, check=True)
    fired = [r.name for r in result.records]
    if fires:
        assert fired, f"{passes} did not fire"
    else:
        assert not [f for f in fired if passes is None or f in passes], f"{passes} fired: {fired}"
    for f in feeds or [feeds_for(proto, 2), feeds_for(proto, 3, seed=1)]:
        ref = ort_run(proto, f)
        got = ort_run(result.model, {k: v for k, v in f.items() if k in {i.name for i in result.model.graph.inputs}})
        assert len(ref) == len(got)
        for r, g in zip(ref, got):
            assert r.shape == g.shape
            np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
    again = optimize_with_report(result.model, level, names, check=True)
    assert again.records == [], f"not idempotent: {[r.name for r in again.records]}"
    assert {v.name: _dims(v) for v in result.model.graph.inputs}.items() <= in_dims.items()
    for before, v in zip(out_dims, result.model.graph.outputs):
        if before is not None and v.shape is not None:
            assert len(before) == len(v.shape)
            for b, a in zip(before, _dims(v)):
                if isinstance(b, str):
                    assert not isinstance(a, int), f"symbolic dim {b} pinned to {a}"
    onnx.checker.check_model(ir.serde.serialize_model(result.model))
    return result.model
