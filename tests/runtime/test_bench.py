"""`portanet bench`: one result per (backend, batch), well-formed numbers, JSON and PNG outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet.cli import cli


def _model(path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=[w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_bench_json_and_plot(tmp_path):
    model = _model(tmp_path / "m.onnx")
    png = tmp_path / "b.png"
    r = CliRunner().invoke(cli, ["bench", str(model), "--backends", "ort", "--batch-sizes", "1,4", "--iters", "3",
                                 "--warmup", "1", "--json", "--plot", str(png)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(x["backend"], x["batch"]) for x in rows] == [("ort", 1), ("ort", 4)]
    for x in rows:
        assert x["runs"] >= 3 and 0 < x["p50_ms"] <= x["p90_ms"]
        np.testing.assert_allclose(x["throughput"], x["batch"] / (x["p50_ms"] / 1000), rtol=1e-9)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_table_and_bad_batch_sizes(tmp_path):
    model = _model(tmp_path / "m.onnx")
    r = CliRunner().invoke(cli, ["bench", str(model), "--backends", "ort", "--batch-sizes", "2", "--iters", "2"])
    assert r.exit_code == 0 and "samples/s" in r.output
    bad = CliRunner().invoke(cli, ["bench", str(model), "--batch-sizes", "one"])
    assert bad.exit_code == 2 and "--batch-sizes" in bad.output
    src = CliRunner().invoke(cli, ["bench", str(model), "--backends", "source", "--batch-sizes", "1"])
    assert src.exit_code == 2 and "--source" in src.output


def test_bench_source_backend_runs_the_source(tmp_path):
    """For an ONNX source the 'source' backend is the ONNX reference runner."""
    src = _model(tmp_path / "src.onnx")
    conv = tmp_path / "conv.onnx"
    assert CliRunner().invoke(cli, ["convert", str(src), "-o", str(conv)]).exit_code == 0
    r = CliRunner().invoke(cli, ["bench", str(conv), "--backends", "ort,source", "--source", str(src),
                                 "--batch-sizes", "2", "--iters", "2", "--warmup", "0", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(x["backend"], x["batch"]) for x in rows] == [("ort", 2), ("source", 2)]
    assert all(x["runs"] >= 2 and x["p50_ms"] > 0 for x in rows)
