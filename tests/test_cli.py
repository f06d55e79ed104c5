"""CLI: every foundation command through click's runner, once as a real subprocess, and
bad inputs (exit 2, one line, no traceback, no output file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet import __version__
from portanet.cli import cli

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    w = numpy_helper.from_array(RNG.standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="fc"), helper.make_node("Relu", ["mm"], ["y"], name="act")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[w])
    p = tmp_path_factory.mktemp("cli") / "small.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8), str(p))
    return p


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_help_lists_commands_and_examples():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("convert", "inspect", "run"):
        assert cmd in r.output
    assert "Examples" in invoke("convert", "--help").output


def test_convert_onnx_to_onnx_with_opset(small_onnx, tmp_path):
    out = tmp_path / "o.onnx"
    r = invoke("convert", small_onnx, "-o", out, "--opset", 13)
    assert r.exit_code == 0, r.output
    proto = onnx.load(str(out))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [13]
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(out), run(small_onnx), rtol=1e-6)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["portanet.source_framework"] == "onnx"


def test_convert_input_shape_override(small_onnx, tmp_path):
    out = tmp_path / "o.onnx"
    assert invoke("convert", small_onnx, "-o", out, "--input-shape", "x=7x4", "-O", 0).exit_code == 0
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [7, 4]


def test_inspect_table_and_json(small_onnx):
    r = invoke("inspect", small_onnx)
    assert r.exit_code == 0 and "MatMul" in r.output and "12 trainable" in r.output
    info = json.loads(invoke("inspect", small_onnx, "--json").output)
    assert info["ops"] == {"MatMul": 1, "Relu": 1}
    assert info["parameters"]["trainable"] == 12
    assert info["inputs"] == [{"name": "x", "shape": ["N", 4], "dtype": "float32"}]
    assert info["opset"] == 14


def test_run_with_input_and_npz_output(small_onnx, tmp_path):
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    r = invoke("run", small_onnx, "--input", f"x={tmp_path / 'x.npy'}", "-o", out)
    assert r.exit_code == 0, r.output
    ref = ort.InferenceSession(str(small_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with np.load(out) as z:
        np.testing.assert_allclose(z["y"], ref, rtol=1e-6)
    assert "[3, 3]" in r.output


def test_run_random_inputs(small_onnx):
    r = invoke("run", small_onnx, "--batch", 5)
    assert r.exit_code == 0 and "[5, 3]" in r.output


def _bad(args, tmp_path, expect: str):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert "Traceback" not in r.output
    assert expect in r.output
    return r


def test_bad_inputs(tmp_path, small_onnx):
    _bad(["inspect", tmp_path / "nope.onnx"], tmp_path, "no such file")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(os.urandom(300))
    _bad(["run", junk], tmp_path, "junk.onnx")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(small_onnx.read_bytes()[:40])
    out = tmp_path / "never.onnx"
    _bad(["convert", trunc, "-o", out], tmp_path, "trunc.onnx")
    assert not out.exists()
    _bad(["convert", small_onnx, "-o", out, "--opset", 25], tmp_path, "outside the supported range")
    assert not out.exists()
    _bad(["run", small_onnx, "--input", f"x={tmp_path / 'missing.npy'}"], tmp_path, "missing.npy")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 5), np.float32))
    _bad(["run", small_onnx, "--input", f"x={tmp_path / 'wrong.npy'}"], tmp_path, "expects shape")
    _bad(["convert", small_onnx, "-o", out, "--input-shape", "x=2xQ?"], tmp_path, "bad shape")


def test_debug_shows_traceback(tmp_path):
    r = CliRunner().invoke(cli, ["--debug", "inspect", str(tmp_path / "nope.onnx")])
    assert r.exit_code != 0 and r.exception is not None


@pytest.mark.parametrize("cmd", ["convert", "inspect", "run"])
def test_real_subprocess(cmd, small_onnx, tmp_path):
    args = {"convert": [str(small_onnx), "-o", str(tmp_path / "s.onnx")], "inspect": [str(small_onnx), "--json"],
            "run": [str(small_onnx)]}[cmd]
    exe = Path(sys.executable).with_name("portanet")
    proc = subprocess.run([str(exe), cmd, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run([str(exe), cmd, str(tmp_path / "missing.onnx"), *(["-o", "x.onnx"] if cmd == "convert" else [])],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "missing.onnx" in bad.stderr
