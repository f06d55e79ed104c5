"""The CNTK v2 schema and reader: field numbers, value types, tensors, detection, CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model_zoo.cntk.writer import CntkWriter, Float, Int, axis, encode, shape
from portanet.cli import cli
from portanet.converters.cntk.reader import Axis, NDShape, read_bytes, sniff
from portanet.converters.cntk.schema import message_class
from portanet.converters.registry import detect
from portanet.runtime.session import Session


def test_field_numbers_on_the_wire():
    """Hand-encoded bytes (field numbers from CNTK.proto) decode to the expected values."""
    DV = message_class("DictionaryValue")
    # value_type=SizeT (2: varint 3), size_t_value (5: varint 7)
    assert DV.FromString(bytes([0x10, 3, 0x28, 7])).size_t_value == 7
    # value_type=NDShape (7), nd_shape_value (9) = NDShape{shape_dim (1, packed) = [2, 3]}
    v = DV.FromString(bytes([0x10, 7, 0x4A, 4, 0x0A, 2, 2, 3]))
    assert list(v.nd_shape_value.shape_dim) == [2, 3]
    # value_type=Axis (8), axis_value (10) = Axis{static_axis_idx (1) = 1, name (2) = "a"}
    v = DV.FromString(bytes([0x10, 8, 0x52, 5, 0x08, 1, 0x12, 1, ord("a")]))
    assert (v.axis_value.static_axis_idx, v.axis_value.name) == (1, "a")


def test_value_types_round_trip():
    top = {
        "type": "CompositeFunction", "root": "r", "inputs": [], "primitive_functions": [],
        "b": True, "i": Int(-3), "s": 2**40, "f": Float(0.5), "d": 0.25, "str": "é",
        "shape": shape(3, 2), "axis": axis(-1), "vec": [1, "x", [False]], "dict": {"k": 1.5},
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3), "arr64": np.ones((2,), np.float64),
    }
    got = read_bytes(encode(top))
    assert got["b"] is True and got["i"] == -3 and got["s"] == 2**40 and got["f"] == 0.5 and got["d"] == 0.25
    assert got["str"] == "é" and got["shape"] == NDShape((3, 2)) and got["axis"].static_axis_idx == -1
    assert got["vec"] == [1, "x", [False]] and got["dict"] == {"k": 1.5}
    np.testing.assert_array_equal(got["arr"], top["arr"])  # CNTK dims [3, 2] -> NumPy (2, 3)
    assert got["arr64"].dtype == np.float64


def test_tensor_types_of_cntk_2_7():
    """Float16 is written widened into float_values, Int8 into bytes_value."""
    view = message_class("NDArrayView")()
    view.data_type = 4  # Float16
    view.shape.shape_dim.extend([2])
    view.float_values.value.extend([1.5, -2.0])
    D = message_class("Dictionary")
    d = D()
    for key, val in (("type", "CompositeFunction"), ("root", "r")):
        d.data[key].value_type = 6
        d.data[key].string_value = val
    for key in ("inputs", "primitive_functions"):
        d.data[key].value_type = 9
    d.data["h"].value_type = 11
    d.data["h"].nd_array_view_value.CopyFrom(view)
    d.data["q"].value_type = 11
    q = d.data["q"].nd_array_view_value
    q.data_type = 5
    q.shape.shape_dim.extend([3])
    q.bytes_value.value = bytes([1, 255, 7])
    got = read_bytes(d.SerializeToString())
    assert got["h"].dtype == np.float16 and got["h"].tolist() == [1.5, -2.0]
    assert got["q"].dtype == np.int8 and got["q"].tolist() == [1, -1, 7]


def test_real_files_decode(cntk_data: Path):
    from portanet.converters.cntk.reader import read_model

    m = read_model(cntk_data / "mnist_conv.cmf")
    assert m["type"] == "CompositeFunction" and m["root"] == "Softmax2014"
    w = next(v for v in m["inputs"] if v["uid"] == "Parameter1534")
    assert w["value"].shape == (8, 1, 5, 5)  # CNTK [5, 5, 1, 8] -> OIHW
    assert isinstance(m["primitive_functions"][0]["attributes"]["autoPadding"][0], bool)
    assert all(isinstance(a, Axis) for a in m["inputs"][-1]["dynamic_axis"])


def test_detection_by_content_not_suffix(cntk_data: Path, tmp_path: Path):
    p = tmp_path / "weights.bin"
    shutil.copy(cntk_data / "mnist_conv.cmf", p)
    assert sniff(p)
    assert detect([p]).name == "cntk"
    other = tmp_path / "notes.model"
    other.write_text("not a model")
    assert not sniff(other)


def test_other_protobufs_are_not_sniffed_as_cntk(tmp_path: Path):
    """ONNX also starts with a varint field 1 and a field-2 string; the map-entry key decides."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    p = tmp_path / "m.model"
    p.write_bytes(helper.make_model(g, producer_name="type").SerializeToString())
    assert not sniff(p)


def test_cli_convert(cntk_data: Path, tmp_path: Path):
    src = tmp_path / "mnist.weird"  # an unusual suffix: detected from content
    shutil.copy(cntk_data / "mnist_conv.cmf", src)
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out)])
    assert res.exit_code == 0, res.output
    s = Session(out)
    x = np.zeros((1, 1, 28, 28), np.float32)
    probs = s.run({"input": x})["output"]
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


def test_input_shape_override(cntk_data: Path):
    from portanet.converters.registry import ConvertOptions, convert_paths
    from portanet.errors import InvalidInputError

    m = convert_paths([cntk_data / "mnist_conv.cmf"], ConvertOptions(input_shapes={"input": [4, 1, 28, 28]}))
    assert list(m.graph.inputs[0].shape) == [4, 1, 28, 28]
    with pytest.raises(InvalidInputError, match="sample shape"):
        convert_paths([cntk_data / "mnist_conv.cmf"], ConvertOptions(input_shapes={"input": [4, 1, 32, 32]}))


def test_sequence_axis_folds_into_batch(tmp_path: Path):
    w = CntkWriter()
    x = w.input((3,), sequence=True)
    y = w.op("Tanh", [x])
    p = w.save(tmp_path / "seq.model", y)
    from portanet.converters.registry import convert_paths

    s = Session(convert_paths([p]))
    xs = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(next(iter(s.run({"input": xs}).values())), np.tanh(xs), rtol=1e-6)


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    from portanet.converters.registry import convert_paths

    s = Session(convert_paths([path]))
    return s.run({s.inputs[0].name: x})


def test_combine_root_gives_several_outputs(tmp_path: Path):
    w = CntkWriter()
    x = w.input((3,))
    a = w.op("ReLU", [x], name="pos")
    b = w.op("Plus", [x, x], name="double")
    p = w.save(tmp_path / "two.model", [a, b])
    xs = np.array([[-1.0, 0.5, 2.0]], np.float32)
    out = _run(p, xs)
    assert list(out) == ["pos", "double"]
    np.testing.assert_array_equal(out["pos"], np.maximum(xs, 0))
    np.testing.assert_array_equal(out["double"], 2 * xs)


def test_nested_blocks_are_flattened(tmp_path: Path):
    """A Block inside a Block: placeholders resolve through both argument maps."""
    w = CntkWriter()
    x = w.input((4,))
    bias = np.arange(4, dtype=np.float32)
    with w.block("Outer", [x], name="outer") as outer:
        with w.block("Inner", [outer.args[0]], name="inner") as inner:
            w.op("Plus", [inner.args[0], w.parameter(bias)])
        w.op("ReLU", [inner.output])
    y = w.op("Negate", [outer.output])
    p = w.save(tmp_path / "nested.model", y)
    xs = np.array([[-5.0, -1.5, 0.0, 1.0]], np.float32)
    np.testing.assert_array_equal(next(iter(_run(p, xs).values())), -np.maximum(xs + bias, 0))


def test_output_that_is_the_input(tmp_path: Path):
    w = CntkWriter()
    x = w.input((2,))
    p = w.save(tmp_path / "pass.model", w.op("Pass", [x]))
    xs = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(next(iter(_run(p, xs).values())), xs)
