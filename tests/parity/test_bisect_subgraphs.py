"""verify --bisect descends into If branches and Loop bodies.

The source is an ONNX file whose layers are its nodes, some of them inside an ``If`` branch and
a ``Loop`` body. References: onnx's reference evaluator on the source file (the verify
runner) and numpy for the probe rewrite itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import portanet
from portanet.ir.probes import expose_inner_values

F = 4
ITERS = 3


def _source(rng: np.random.Generator) -> onnx.ModelProto:
    """pre -> If (then: then_mm -> then_relu; else: else_tanh) -> Loop x3 (body_mul, body_add
    reading ``pre``'s output from the outer scope) -> post. The If condition is always true."""
    f32 = TensorProto.FLOAT

    def w(name):
        return numpy_helper.from_array(rng.uniform(-0.8, 0.8, (F, F)).astype(np.float32), name)

    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["p", "Wt"], ["t1"], name="then_mm"),
         helper.make_node("Relu", ["t1"], ["t2"], name="then_relu")],
        "then", [], [helper.make_tensor_value_info("t2", f32, None)])
    else_g = helper.make_graph(
        [helper.make_node("Tanh", ["p"], ["e1"], name="else_tanh")],
        "else", [], [helper.make_tensor_value_info("e1", f32, None)])
    body = helper.make_graph(
        [helper.make_node("Constant", [], ["half"], name="body_half",
                          value=numpy_helper.from_array(np.array(0.5, np.float32))),
         helper.make_node("Mul", ["v_in", "half"], ["b1"], name="body_mul"),
         helper.make_node("Add", ["b1", "p"], ["b2"], name="body_add"),
         helper.make_node("Identity", ["c_in"], ["c_out"], name="body_cond")],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", f32, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("b2", f32, None)])
    nodes = [
        helper.make_node("MatMul", ["X", "Wp"], ["p"], name="pre"),
        helper.make_node("Mul", ["p", "p"], ["sq"], name="square"),
        helper.make_node("ReduceSum", ["sq"], ["s"], name="total", keepdims=0),
        helper.make_node("Greater", ["s", "minus_one"], ["c"], name="cond"),
        helper.make_node("If", ["c"], ["y1"], name="branch", then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trips", "true", "y1"], ["y2"], name="loop", body=body),
        helper.make_node("MatMul", ["y2", "Wq"], ["out"], name="post"),
    ]
    inits = [w("Wp"), w("Wt"), w("Wq"), numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"),
             numpy_helper.from_array(np.array(ITERS, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "true")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", f32, ["N", F])],
                              [helper.make_tensor_value_info("out", f32, ["N", F])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rng = np.random.default_rng(0)
    model = _source(rng)
    path = tmp_path_factory.mktemp("sub") / "ctrl.onnx"
    onnx.save(model, str(path))
    return path, model, {n.name: numpy_helper.to_array(n) for n in model.graph.initializer}


def test_probe_outputs_inner_values(source) -> None:
    """The rewrite keeps the model's output and adds the inner values: the executed branch's
    value, an empty tensor for the branch that did not run, every loop iteration (flattened)
    stacked."""
    _, model, w = source
    probe, names = expose_inner_values(model, ["t2", "e1", "b1", "b2", "p"])
    assert set(names) == {"t2", "e1", "b1", "b2"}  # "p" is a top-level value
    x = np.random.default_rng(1).standard_normal((2, F)).astype(np.float32)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": x})))
    p = x @ w["Wp"]
    t2 = np.maximum(p @ w["Wt"], 0)
    v, b1s, b2s = t2, [], []
    for _ in range(ITERS):
        b1s.append(v * 0.5)
        v = b1s[-1] + p
        b2s.append(v)
    tol = 1e-5 + 1e-4 * float(np.abs(v @ w["Wq"]).max())
    assert np.abs(got["out"] - v @ w["Wq"]).max() <= tol
    assert np.abs(got[names["t2"]] - t2).max() <= 1e-5 + 1e-4 * float(np.abs(t2).max())
    assert got[names["e1"]].shape == (0,)
    for name, steps in (("b1", b1s), ("b2", b2s)):  # (iterations, flattened value)
        want = np.stack([s.reshape(-1) for s in steps])
        assert got[names[name]].shape == want.shape
        assert np.abs(got[names[name]] - want).max() <= 1e-5 + 1e-4 * float(np.abs(want).max())


def _converted(path) -> ir.Model:
    return portanet.convert(str(path))


def test_clean_model_verifies_through_subgraph_layers(source) -> None:
    path, _, _ = source
    report = portanet.verify(str(path), onnx=_converted(path), bisect=True, backends=["torch"])
    assert report.passed, report
    # the top-level layers and the four inner ones (the else branch did not run)
    assert report.bisect is not None and report.bisect.layer is None
    assert report.bisect.compared >= 4 + 4


@pytest.mark.parametrize("damage", ["then_mm", "body_mul"])
def test_bisect_names_the_damaged_inner_layer(source, tmp_path, damage: str) -> None:
    path, _, _ = source
    bad = _converted(path)
    if damage == "then_mm":  # a weight read only inside the then branch
        v = bad.graph.initializers["Wt"]
        v.const_value = ir.tensor(v.const_value.numpy() * 1.5 + 0.1, name="Wt")
        last_good = "total"  # the last float layer before the If (its condition is boolean)
    else:  # the loop body's constant: body_mul computes v * 0.6 instead of v * 0.5
        node = next(n for n in ir.traversal.RecursiveGraphIterator(bad.graph) if n.name == "body_half")
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.array(0.6, np.float32)))
        last_good = "branch"
    for backend in ("ort", "torch"):
        report = portanet.verify(str(path), onnx=bad, bisect=True, backends=[backend], repro_dir=tmp_path / backend)
        assert not report.passed
        b = report.bisect
        assert b is not None and b.layer == damage, (backend, b)
        assert b.last_good == last_good, (backend, b.last_good)
        # the repro: the model up to the damaged inner layer reproduces the divergence
        sess = ort.InferenceSession(b.repro["model"], providers=["CPUExecutionProvider"])
        feeds = dict(np.load(b.repro["inputs"]))
        (expected,) = np.load(b.repro["expected"]).values()
        (got,) = sess.run(None, feeds)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() > 1e-5 + 1e-4 * float(np.abs(expected).max())
