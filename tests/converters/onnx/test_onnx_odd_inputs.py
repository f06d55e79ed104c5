"""Odd but valid ONNX files (what older exporters write): literal -1 dims, named free dims,
graph outputs without a shape or type, no value_info, opsets 7-12. Whatever ONNX Runtime
runs, portanet loads, runs (``Session``, ``portanet run -i``) and converts, with ONNX
Runtime's own results on the original file as the reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet.cli import cli
from portanet.ir.io import load_onnx
from portanet.runtime.session import Session

RTOL, ATOL = 1e-4, 1e-5


def _write(path, in_dims, out_vi=None, opset=13, bn=False):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1])]
    last = "c"
    if bn:
        for n, v in (("s", 1.5), ("o", 0.1), ("m", 0.2), ("v", 2.0)):
            inits.append(numpy_helper.from_array(np.full(4, v, np.float32), n))
        attrs = {"spatial": 1} if opset < 9 else {}
        nodes.append(helper.make_node("BatchNormalization", ["c", "s", "o", "m", "v"], ["bn"], epsilon=1e-3, **attrs))
        last = "bn"
    nodes.append(helper.make_node("Relu", [last], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)
    if out_vi is None:
        out_vi = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)  # no shape
    g = helper.make_graph(nodes, "g", [x], [out_vi], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 15 else 8
    onnx.save(m, str(path))
    return path


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _x(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _no_type():
    vi = onnx.ValueInfoProto()
    vi.name = "y"
    return vi


CASES = {
    # name: (input dims, output value info, opset, batch norm, feed shapes ORT accepts)
    "minus_one_batch": ([-1, 3, 8, 8], None, 13, False, [(1, 3, 8, 8), (3, 3, 8, 8)]),
    "named_free_dims": (["batch", 3, "h", "w"], None, 13, False, [(1, 3, 8, 8), (3, 3, 10, 12)]),
    "output_without_type": ([1, 3, 8, 8], _no_type(), 13, False, [(1, 3, 8, 8)]),
    "opset7": (["N", 3, 8, 8], None, 7, True, [(2, 3, 8, 8)]),
    "opset9": (["N", 3, 8, 8], None, 9, True, [(2, 3, 8, 8)]),
    "opset11": (["N", 3, 8, 8], None, 11, True, [(2, 3, 8, 8)]),
    "opset12_minus_one": ([-1, 3, -1, -1], None, 12, True, [(2, 3, 8, 8), (1, 3, 5, 7)]),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_session_runs_what_onnxruntime_runs(tmp_path, name, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    dims, out_vi, opset, bn, feeds = CASES[name]
    path = _write(tmp_path / f"{name}.onnx", dims, out_vi, opset, bn)
    session = Session(load_onnx(path), backend=backend)
    for shape in feeds:
        x = _x(*shape)
        (got,) = session.run({"x": x}).values()
        np.testing.assert_allclose(got, _ort(path, x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(CASES))
def test_cli_run_convert(tmp_path, name):
    dims, out_vi, opset, bn, feeds = CASES[name]
    path = _write(tmp_path / f"{name}.onnx", dims, out_vi, opset, bn)
    runner = CliRunner()
    res = runner.invoke(cli, ["run", str(path)])  # random inputs of the declared shapes
    assert res.exit_code == 0, res.output
    shape = feeds[-1]
    np.save(tmp_path / "x.npy", _x(*shape, seed=5))
    res = runner.invoke(cli, ["run", str(path), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "y.npz")])
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_allclose(z["y"], _ort(path, _x(*shape, seed=5)), rtol=RTOL, atol=ATOL)
    out = tmp_path / "converted.onnx"
    res = runner.invoke(cli, ["convert", str(path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    onnx.checker.check_model(str(out))
    np.testing.assert_allclose(_ort(out, _x(*shape, seed=5)), _ort(path, _x(*shape, seed=5)), rtol=RTOL, atol=ATOL)


def test_literal_zero_dim_refuses_like_onnxruntime(tmp_path):
    """A literal 0 is a zero-size dim for ONNX Runtime (it refuses batch 1): a clean exit 2."""
    path = _write(tmp_path / "zero.onnx", [0, 3, 8, 8], helper.make_tensor_value_info("y", TensorProto.FLOAT, [0, 4, 8, 8]))
    with pytest.raises(Exception, match="Got invalid dimensions"):
        _ort(path, _x(1, 3, 8, 8))
    np.save(tmp_path / "x.npy", _x(1, 3, 8, 8))
    res = CliRunner().invoke(cli, ["run", str(path), "-i", f"x={tmp_path / 'x.npy'}"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
