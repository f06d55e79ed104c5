"""Session over ONNX Runtime: feeds validation, random feeds, device handling."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from portanet.errors import InvalidInputError, RuntimeBackendError
from portanet.runtime import Session


def _model():
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("ReduceSum", ["sq"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_run_matches_numpy():
    s = Session(_model())
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(s.run({"x": x})["y"], (x * x).sum(), rtol=1e-6)
    assert [i.name for i in s.inputs] == ["x"] and s.inputs[0].shape == ("N", 3)


def test_random_feeds_follow_declared_shapes():
    s = Session(_model())
    f = s.random_feeds(batch=4, seed=1)
    assert f["x"].shape == (4, 3) and f["x"].dtype == np.float32
    np.testing.assert_array_equal(f["x"], s.random_feeds(batch=4, seed=1)["x"])


@pytest.mark.parametrize(
    ("feeds", "match"),
    [
        ({}, "missing input"),
        ({"x": np.zeros((2, 3), np.float32), "z": np.zeros(1)}, "unknown input"),
        ({"x": np.zeros((2, 4), np.float32)}, r"expects shape \['N', 3\], received \[2, 4\]"),
        ({"x": np.zeros((3,), np.float32)}, "expects rank 2"),
        ({"x": np.array([["a", "b", "c"]])}, "expects float32"),
    ],
)
def test_bad_feeds(feeds, match):
    with pytest.raises(InvalidInputError, match=match):
        Session(_model()).run(feeds)


def test_float64_feed_is_cast():
    out = Session(_model()).run({"x": np.ones((1, 3))})
    assert float(out["y"]) == 3.0


def test_cuda_requested_without_provider_is_a_clear_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider; the error path cannot occur")
    with pytest.raises(RuntimeBackendError, match="device 'cuda' requested"):
        Session(_model(), device="cuda")


@pytest.mark.gpu
def test_cuda_session_matches_cpu():
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(Session(_model(), device="cuda").run({"x": x})["y"],
                               Session(_model()).run({"x": x})["y"], rtol=1e-5)


def test_unknown_backend_and_device():
    with pytest.raises(InvalidInputError, match="unknown backend"):
        Session(_model(), backend="tvm")
    with pytest.raises(InvalidInputError, match="unknown device"):
        Session(_model(), device="tpu")


def test_scalar_feed_stays_scalar():
    g = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    out = Session(m).run({"x": np.ones(3, np.float32), "s": np.float32(2.0)})
    np.testing.assert_array_equal(out["y"], [2.0, 2.0, 2.0])


def test_large_initializers_reach_ort_from_memory():
    """Weights of every numpy dtype go to ONNX Runtime from memory, not through the protobuf:
    same results as numpy, the IR model is left as it was, and the session keeps its own copy."""
    import onnx_ir as ir
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)  # 16 KB: from memory
    idx = rng.integers(0, 64, 300).astype(np.int64)  # 2.4 KB int64
    h = rng.standard_normal(600).astype(np.float16)  # 1.2 KB float16
    mask = rng.integers(0, 2, 2000).astype(bool)[:300]
    mask = np.tile(mask, 4)[:1200].reshape(4, 300)  # 1.2 KB bool
    small = np.float32([2.0])  # stays inside the graph
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (idx, "idx"), (h, "h"), (mask, "mask"),
                                                         (small, "small"))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]),
             helper.make_node("Gather", ["xw", "idx"], ["g"], axis=1),
             helper.make_node("Where", ["mask", "g", "small"], ["y"]),
             helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 300]),
                           helper.make_tensor_value_info("hf", TensorProto.FLOAT, [600])], initializer=inits)
    model = ir.serde.deserialize_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)],
                                                         ir_version=10))
    w_ir = w.copy()
    model.graph.initializers["w"].const_value = ir.tensor(w_ir, name="w")  # backed by a writable array
    before = {n: v.const_value for n, v in model.graph.initializers.items()}
    s = Session(model)
    assert {n: v.const_value for n, v in model.graph.initializers.items()} == before  # nothing swapped left
    w_ir[...] = 0.0  # an in-place edit of the IR's weights after the session was made
    x = rng.standard_normal((4, 64)).astype(np.float32)
    out = s.run({"x": x})
    np.testing.assert_allclose(out["y"], np.where(mask, (x @ w)[:, idx], 2.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["hf"], h.astype(np.float32))
