"""Bad input to ``portanet quantize``: exit 2, one line, no traceback, no output file."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_exit_2(r, out, *words):
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output
    for w in words:
        assert w in lines[0], lines[0]
    assert not out.exists()


def _save(tmp_path, nodes, inputs, outputs, inits=(), name="m.onnx"):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    p = tmp_path / name
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    return p


@pytest.fixture
def image_model(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    f = numpy_helper.from_array(np.random.default_rng(1).standard_normal((10, 4 * 26 * 26)).astype(np.float32), "f")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("Flatten", ["c"], ["fl"]),
             helper.make_node("Gemm", ["fl", "f"], ["y"], transB=1, name="fc")]
    return _save(tmp_path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w, f])


def test_data_that_does_not_fit_the_input(image_model, tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((40, 5), np.float32), y=np.zeros(40, np.int64))
    out = tmp_path / "q.onnx"
    assert_one_line_exit_2(invoke("quantize", image_model, "-o", out, "--data", data), out,
                           "d.npz", "cannot feed model input 'x'")


def test_model_without_float_weights(tmp_path):
    model = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="act")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 28, 28])])
    out = tmp_path / "q.onnx"
    assert_one_line_exit_2(invoke("quantize", model, "-o", out), out, "m.onnx", "no float weights")


def test_already_quantized_model(image_model, tmp_path):
    first = tmp_path / "q1.onnx"
    assert invoke("quantize", image_model, "-o", first, "--no-latency", "--samples", "16",
                  "--test-samples", "50").exit_code == 0
    out = tmp_path / "q2.onnx"
    assert_one_line_exit_2(invoke("quantize", first, "-o", out), out, "q1.onnx", "already quantized")


def test_missing_model_and_bad_options(image_model, tmp_path):
    out = tmp_path / "q.onnx"
    assert_one_line_exit_2(invoke("quantize", tmp_path / "nope.onnx", "-o", out), out, "nope.onnx")
    assert_one_line_exit_2(invoke("quantize", image_model, "-o", out, "--samples", "0"), out, "--samples")
    assert_one_line_exit_2(invoke("quantize", image_model, "-o", out, "--max-accuracy-drop", "-1"), out,
                           "--max-accuracy-drop")
    assert invoke("quantize", image_model, "-o", out, "--calibration", "magic").exit_code == 2
    assert not out.exists()


def test_budget_needs_a_classifier_output(tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((784, 1)).astype(np.float32), "w")
    model = _save(tmp_path, [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], [w])
    out = tmp_path / "q.onnx"
    assert_one_line_exit_2(invoke("quantize", model, "-o", out, "--max-accuracy-drop", "0.5", "--no-latency"), out,
                           "classifier output")
