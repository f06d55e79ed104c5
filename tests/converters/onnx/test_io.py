"""ONNX load/save: opset conversion keeps outputs (ONNX Runtime on the original file is the
reference), metadata survives, atomic writes, external data, and refused inputs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import portanet
from portanet.errors import InvalidInputError, InvalidModelError
from portanet.ir import io as pio
from portanet.ir.io import load_onnx, model_opset, save_onnx
from portanet.ir.provenance import SOURCE_KEY

RNG = np.random.default_rng(0)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def model_v18() -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> ReduceMean(axes input) -> Split(num_outputs) -> Pad -> Softmax -> Gemm: ops whose
    signatures changed between opsets 13 and 21, so conversion has real work to do."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("ReduceMean", ["p", "axes"], ["m"], keepdims=0, name="mean"),  # (N, 4, 3) over H
        helper.make_node("Split", ["m"], ["s0", "s1"], axis=1, num_outputs=2, name="split"),
        helper.make_node("Add", ["s0", "s1"], ["a"], name="add"),  # (N, 2, 3)
        helper.make_node("Pad", ["a", "pads"], ["pd"], mode="constant", name="pad"),  # (N, 2, 5)
        helper.make_node("Flatten", ["pd"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1, name="gemm"),
        helper.make_node("Softmax", ["g"], ["y"], axis=-1, name="softmax"),
    ]
    for n in nodes:
        e = n.metadata_props.add()
        e.key, e.value = SOURCE_KEY, "src_" + n.name
    inits = [
        _init("w", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _init("b", RNG.standard_normal(4).astype(np.float32)),
        _init("axes", np.array([2], np.int64)),
        _init("pads", np.array([0, 0, 1, 0, 0, 1], np.int64)),
        _init("gw", RNG.standard_normal((5, 10)).astype(np.float32)),
        _init("gb", RNG.standard_normal(5).astype(np.float32)),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(m, full_check=True)
    return m


def _ort(path_or_bytes, x):
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def v18(tmp_path_factory):
    p = tmp_path_factory.mktemp("v18") / "m.onnx"
    onnx.save(model_v18(), str(p))
    return p


X = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("opset", list(range(13, 22)))
def test_save_at_every_opset_keeps_outputs(v18, tmp_path, opset):
    ref = _ort(v18, X)
    out = save_onnx(load_onnx(v18), tmp_path / f"m{opset}.onnx", opset=opset)
    proto = onnx.load(str(out))
    assert model_opset(proto) == opset
    onnx.checker.check_model(proto)
    np.testing.assert_allclose(_ort(out, X), ref, rtol=1e-5, atol=1e-6)
    # provenance survives the version converter
    assert all(any(p.key == SOURCE_KEY for p in n.metadata_props) for n in proto.graph.node if n.op_type != "Constant")
    # and loading upgrades back to 18 with equal outputs
    back = load_onnx(out)
    assert model_opset(back) == 18
    np.testing.assert_allclose(_ort(portanet_bytes(back), X), ref, rtol=1e-5, atol=1e-6)


def portanet_bytes(model) -> bytes:
    import onnx_ir as ir

    return ir.serde.serialize_model(model).SerializeToString()


def test_old_opset_is_upgraded_with_equal_outputs(tmp_path):
    """An opset-9 model (BatchNormalization-9, Softmax-1 flatten semantics, Upsample) loads at 18."""
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "bb", "mu", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Upsample", ["bn", "scales"], ["up"], mode="nearest"),
        helper.make_node("Softmax", ["up"], ["y"], axis=1),  # opset<13: softmax over flattened dims 1..
    ]
    c = 3
    inits = [
        _init("s", RNG.random(c).astype(np.float32) + 0.5), _init("bb", RNG.standard_normal(c).astype(np.float32)),
        _init("mu", RNG.standard_normal(c).astype(np.float32)), _init("var", RNG.random(c).astype(np.float32) + 0.5),
        _init("scales", np.array([1, 1, 2, 2], np.float32)),
    ]
    g = helper.make_graph(nodes, "old", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8, 8])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
    p = tmp_path / "old.onnx"
    onnx.save(m, str(p))
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    ref = _ort(p, x)
    up = load_onnx(p)
    assert model_opset(up) == 18
    np.testing.assert_allclose(_ort(portanet_bytes(up), x), ref, rtol=1e-5, atol=1e-7)


def test_metadata_roundtrip(v18, tmp_path):
    m = load_onnx(v18)
    m.metadata_props["portanet.parity"] = '{"max_abs": 1e-7}'
    out = save_onnx(m, tmp_path / "a.onnx", opset=15)
    again = load_onnx(out)
    assert again.metadata_props["portanet.parity"] == '{"max_abs": 1e-7}'


@pytest.mark.parametrize("writer", ["write_streamed", "external"])
def test_interrupted_save_leaves_no_file(v18, tmp_path, monkeypatch, writer):
    """A save that dies half-way (after its writer wrote part of the file) leaves neither the
    target nor temp files, on both write paths: weights streamed into one file, and external data."""
    model = load_onnx(v18)
    target = tmp_path / "out.onnx"

    def die_after(real):
        def dying(*args, **kw):
            real(*args, **kw)
            path = args[2] if writer == "write_streamed" else args[1]
            with open(path, "r+b") as f:  # half-written, then the process "dies"
                f.truncate(100)
            raise KeyboardInterrupt
        return dying

    if writer == "write_streamed":
        monkeypatch.setattr(pio, "write_streamed", die_after(pio.write_streamed))
    else:
        monkeypatch.setattr(pio.ir, "save", die_after(pio.ir.save))
    with pytest.raises(KeyboardInterrupt):
        save_onnx(model, target, external_data=writer == "external")
    assert not target.exists()
    assert os.listdir(tmp_path) == []  # no temp leftovers either


def test_failed_save_keeps_previous_file(v18, tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous")
    monkeypatch.setattr(pio.onnx.checker, "check_model", lambda *a, **k: (_ for _ in ()).throw(
        onnx.checker.ValidationError("boom")))
    with pytest.raises(InvalidModelError):
        save_onnx(load_onnx(v18), target)
    assert target.read_bytes() == b"previous"


def test_external_data_save_and_load(v18, tmp_path, monkeypatch):
    """The > 2 GB path, exercised with a small model by lowering the threshold."""
    monkeypatch.setattr(pio, "EXTERNAL_THRESHOLD", 100)
    out = save_onnx(load_onnx(v18), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    proto = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
    again = load_onnx(out)
    out2 = save_onnx(again, tmp_path / "sub" / "x.onnx") if (tmp_path / "sub").mkdir() is None else None
    np.testing.assert_allclose(_ort(out2, X), _ort(v18, X), rtol=1e-6)
    np.testing.assert_allclose(_ort(out, X), _ort(v18, X), rtol=1e-6)


def _with_external_location(tmp_path, location: str):
    m = model_v18()
    t = m.graph.initializer[0]
    raw = numpy_helper.to_array(t).tobytes()
    (tmp_path / "w.bin").write_bytes(raw)
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    p = tmp_path / "ext.onnx"
    onnx.save(m, str(p))
    return p


def test_external_data_inside_folder_loads(tmp_path):
    from portanet.runtime import Session

    p = _with_external_location(tmp_path, "w.bin")
    got = Session(load_onnx(p)).run({"x": X})["y"]
    np.testing.assert_allclose(got, _ort(p, X), rtol=1e-6)


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    p = _with_external_location(tmp_path, location)
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        load_onnx(p)


def test_bad_files(tmp_path, v18):
    with pytest.raises(InvalidInputError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty file"):
        load_onnx(empty)
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)
    with pytest.raises(InvalidModelError, match="not a valid ONNX file"):
        load_onnx(text)
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(v18.read_bytes()[: v18.stat().st_size // 2])
    with pytest.raises(InvalidModelError):
        load_onnx(trunc)


def test_opset_out_of_range(tmp_path, v18):
    m = model_v18()
    m.opset_import[0].version = 5
    p = tmp_path / "o5.onnx"
    onnx.save(m, str(p))
    with pytest.raises(InvalidModelError, match="opset 5 is outside"):
        load_onnx(p)
    for bad in (12, 22):
        with pytest.raises(InvalidInputError, match=f"opset {bad} is outside"):
            save_onnx(load_onnx(v18), tmp_path / "x.onnx", opset=bad)
    assert not (tmp_path / "x.onnx").exists()


def test_public_api_load_save(v18, tmp_path):
    m = portanet.load(v18)
    portanet.save(m, tmp_path / "p.onnx", opset=17)
    assert model_opset(onnx.load(str(tmp_path / "p.onnx"))) == 17
