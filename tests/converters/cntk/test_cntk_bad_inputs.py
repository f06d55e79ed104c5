"""Bad CNTK inputs: one-line PortanetErrors naming the file (and the function where known),
CLI exit status 2 without a traceback, and never a written output file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model_zoo.cntk.writer import CntkWriter
from portanet.cli import cli
from portanet.converters.cntk.reader import read_bytes
from portanet.converters.registry import convert_paths, detect
from portanet.errors import ConversionError, InvalidModelError, UnsupportedOpError


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_truncated_file(cntk_data: Path, tmp_path: Path, cut: float):
    data = (cntk_data / "mnist_conv.cmf").read_bytes()
    p = tmp_path / "trunc.cmf"
    p.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(InvalidModelError) as ei:
        convert_paths([p], framework="cntk")
    msg = _one_line(ei.value)
    assert str(p) in msg and ("truncated" in msg or "not a CNTK v2 model" in msg)


def test_truncated_large_file(tmp_path: Path):
    w = CntkWriter()
    x = w.input((3,))
    y = w.op("Plus", [x, w.parameter(np.arange(3, dtype=np.float32))])
    p = w.save(tmp_path / "big.model", y, large=True)
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(InvalidModelError, match="truncated CNTK model: tensor data ends"):
        convert_paths([p], framework="cntk")


def test_protobuf_that_is_not_a_cntk_dictionary(tmp_path: Path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp_path / "model.model"
    p.write_bytes(onnx.helper.make_model(g).SerializeToString())
    with pytest.raises(InvalidModelError) as ei:
        convert_paths([p], framework="cntk")
    assert "not a CNTK v2 model" in _one_line(ei.value)


def test_dictionary_without_composite_function():
    from model_zoo.cntk.writer import encode

    with pytest.raises(InvalidModelError, match="expected a Dictionary with type 'CompositeFunction', received 'Foo'"):
        read_bytes(encode({"type": "Foo", "version": 3}), "x.model")


def test_v1_brainscript_model(tmp_path: Path):
    p = tmp_path / "old.dnn"
    p.write_bytes("BCN\0".encode("utf-16-le") + b"BVersion".ljust(64, b"\0"))
    assert detect([p]).name == "cntk"
    with pytest.raises(InvalidModelError) as ei:
        convert_paths([p])
    assert _one_line(ei.value) == (
        f"{p}: CNTK v1 (BrainScript) models are not supported; load and re-save with CNTK 2.x")


def test_op_number_outside_the_table(tmp_path: Path):
    w = CntkWriter()
    x = w.input((3,))
    y = w.op("ReLU", [w.op("Plus", [x, x])], op_number=999)
    p = w.save(tmp_path / "weird.model", y)
    with pytest.raises(ConversionError) as ei:
        convert_paths([p])
    msg = _one_line(ei.value)
    uid = y.rsplit("_Output_", 1)[0]
    assert f"'{uid}'" in msg and "op number 999" in msg and str(p) in msg


def _refused_recurrent_model(path: Path) -> Path:
    """Recurrent variants portanet refuses, next to an op it lacks: a loop mixing PastValue
    and FutureValue, a delay with offset 0, an OptimizedRNNStack with an unknown recurrentOp,
    a sequence gather whose flags are computed from the data."""
    w = CntkWriter()
    x = w.input((4,), sequence=True)
    p = w.placeholder()
    past = w.op("PastValue", [p, w.constant(np.float32(0))], {"offset": 1})
    fut = w.op("FutureValue", [p, w.constant(np.float32(0))], {"offset": 1})
    h = w.op("Tanh", [w.op("Plus", [w.op("Plus", [x, past]), fut])])
    w.bind(p, h)
    d0 = w.op("PastValue", [h, w.constant(np.float32(0))], {"offset": 0})
    c = w.op("OptimizedRNNStack", [d0, w.parameter(np.zeros(8, np.float32))],
             {"hiddenSize": 2, "numLayers": 1, "bidirectional": False, "recurrentOp": "lstmp"})
    y = w.op("Hardmax", [w.op("ReLU", [c])])
    # a gather whose flags read the data: every sample would get its own length
    sel = w.op("GatherPacked", [x, w.op("PackedIndex", [x, w.op("Where", [w.op("ReLU", [x])])])])
    return w.save(path, [y, sel])


def test_unsupported_ops_listed_at_once(tmp_path: Path):
    p = _refused_recurrent_model(tmp_path / "rnn.model")
    with pytest.raises(UnsupportedOpError) as ei:
        convert_paths([p])
    err = ei.value
    assert set(err.unsupported) == {"PastValue(in a loop mixing PastValue and FutureValue)",
                                    "FutureValue(in a loop mixing PastValue and FutureValue)",
                                    "PastValue(offset=0)", "OptimizedRNNStack(recurrentOp=lstmp)", "Hardmax",
                                    "Where(flags computed from the data)"}
    assert "6 unsupported layer(s) of 6 type(s)" in _one_line(err)


def test_unsupported_recurrence_cli_exit_2_no_output(tmp_path: Path):
    p = _refused_recurrent_model(tmp_path / "rnn.model")
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(cli, ["convert", str(p), "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "OptimizedRNNStack(recurrentOp=lstmp)" in res.output
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


def test_initial_state_of_the_wrong_shape_is_located(tmp_path: Path):
    """A (2,) initial state for a (3,) recurrence: refused in one line at a function of the loop."""
    w = CntkWriter()
    x = w.input((3,), sequence=True)
    p = w.placeholder()
    delay = w.op("PastValue", [p, w.constant(np.zeros(2, np.float32))], {"offset": 1})  # (2,) for (3,)
    h = w.op("Tanh", [w.op("Plus", [x, delay])])
    w.bind(p, h)
    path = w.save(tmp_path / "badinit.model", h)
    with pytest.raises(ConversionError) as ei:
        convert_paths([path])
    msg = _one_line(ei.value)
    assert str(path) in msg and "cntk layer '" in msg and "[2]" in msg and "broadcast" in msg


def test_cycle_without_a_delay_is_corrupt(tmp_path: Path):
    w = CntkWriter()
    x = w.input((2,), sequence=True)
    p = w.placeholder()
    h = w.op("Tanh", [w.op("Plus", [x, p])])
    w.bind(p, h)
    path = w.save(tmp_path / "cycle.model", h)
    with pytest.raises(InvalidModelError, match="form a cycle that does not pass through a PastValue/FutureValue"):
        convert_paths([path])


def test_shape_mismatch_names_the_function(tmp_path: Path):
    w = CntkWriter()
    x = w.input((5,))
    y = w.op("Times", [w.parameter(np.zeros((4, 3), np.float32)), x], {"outputRank": 1})
    p = w.save(tmp_path / "bad_times.model", y)
    with pytest.raises(ConversionError) as ei:
        convert_paths([p])
    msg = _one_line(ei.value)
    uid = y.rsplit("_Output_", 1)[0]
    assert f"cntk layer '{uid}' (Times)" in msg and "expected" in msg and "received [5]" in msg


def test_cli_exit_2_without_traceback_or_output(tmp_path: Path, cntk_data: Path):
    bad = tmp_path / "bad.cmf"
    bad.write_bytes((cntk_data / "mnist_conv.cmf").read_bytes()[:1000])
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(cli, ["convert", str(bad), "-o", str(out)])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert not out.exists() and not list(tmp_path.glob("*.onnx*"))


def test_reference_runner_says_there_is_no_cntk(cntk_data: Path):
    from portanet.errors import RuntimeBackendError
    from portanet.parity.reference import runner_for

    runner = runner_for("cntk")
    with pytest.raises(RuntimeBackendError, match="no CNTK runtime exists for current Python"):
        runner.run_reference([cntk_data / "mnist_conv.cmf"], {"input": np.zeros((1, 1, 28, 28), np.float32)})


def test_convolution_along_channels_is_refused(tmp_path: Path):
    """autoPadding on the channel axis with channel stride 1 would slide the kernel over
    channels in CNTK; that is not an ONNX convolution, so it is refused, not approximated."""
    from model_zoo.cntk.writer import shape

    w = CntkWriter()
    x = w.input((4, 6, 6))
    y = w.op("Convolution", [w.parameter(np.zeros((2, 4, 3, 3), np.float32)), x],
             {"autoPadding": [True, True, True], "strides": shape(1, 1, 1), "sharing": [True],
              "lowerPad": shape(0), "upperPad": shape(0), "transpose": False})
    p = w.save(tmp_path / "chanconv.model", y)
    with pytest.raises(ConversionError, match="convolution along the channel axis is not supported"):
        convert_paths([p])
