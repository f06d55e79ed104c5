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
