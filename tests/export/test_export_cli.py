"""``portanet export`` on the command line: success, unsupported ops (exit 2, all listed, no
output), a parity failure (exit 3 naming the first divergent layer) and bad arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet.cli import cli
from tests.export.conftest import case_study_caffe_files


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def odd_onnx(tmp_path_factory) -> Path:
    """A model with ops no export target supports (Einsum x2, TopK) among supported ones."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    k = numpy_helper.from_array(np.array([2], dtype=np.int64), "k")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="act"),
        helper.make_node("Einsum", ["r", "w"], ["e1"], name="mix1", equation="ni,ij->nj"),
        helper.make_node("Einsum", ["e1", "w"], ["e2"], name="mix2", equation="ni,ij->nj"),
        helper.make_node("TopK", ["e2", "k"], ["y", "idx"], name="top", axis=1),
    ]
    g = helper.make_graph(nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], initializer=[w, k])
    p = tmp_path_factory.mktemp("odd") / "odd.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(p))
    return p


def test_export_pytorch_from_caffe(tmp_path: Path) -> None:
    prototxt, caffemodel = case_study_caffe_files()
    out = tmp_path / "net.py"
    res = invoke("export", prototxt, caffemodel, "--to", "pytorch", "-o", out)
    assert res.exit_code == 0, res.output
    assert out.exists() and out.with_suffix(".pt").exists()
    assert "verified against ONNX Runtime" in res.output


@pytest.mark.parametrize("target", ["pytorch", "keras"])
def test_unsupported_ops_listed_at_once_exit_2_no_output(odd_onnx: Path, tmp_path: Path, target: str) -> None:
    out = tmp_path / ("net.py" if target == "pytorch" else "net.keras")
    res = invoke("export", odd_onnx, "--to", target, "-o", out)
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "Traceback" not in res.output
    assert "Einsum x2 (mix1, mix2)" in line and "TopK x1 (top)" in line
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a scratch folder


def test_parity_failure_exits_3_naming_the_layer(monkeypatch, tmp_path: Path) -> None:
    """A deliberately wrong emitter (tanh written as sigmoid) must be caught and located."""
    from portanet.export.torch_code import writer
    from portanet.export.torch_code.ops import activation  # noqa: F401 - registers the emitters

    monkeypatch.setitem(writer._EMITTERS, "Tanh", lambda w, node: f"torch.sigmoid({w.x(node.inputs[0])})")
    prototxt, caffemodel = case_study_caffe_files()
    res = invoke("export", prototxt, caffemodel, "--to", "pytorch", "-o", tmp_path / "net.py")
    assert res.exit_code == 3, res.output
    assert "first divergent layer 'tanh1'" in res.output


def test_bad_target_and_suffix(tmp_path: Path) -> None:
    prototxt, caffemodel = case_study_caffe_files()
    res = invoke("export", prototxt, caffemodel, "--to", "caffe2", "-o", tmp_path / "x")
    assert res.exit_code == 2 and "unknown export target 'caffe2'" in res.output
    res = invoke("export", prototxt, caffemodel, "--to", "pytorch", "-o", tmp_path / "net.txt")
    assert res.exit_code == 2 and "name it <something>.py" in res.output
    assert list(tmp_path.iterdir()) == []
