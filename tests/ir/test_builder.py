"""GraphBuilder: provenance, unique names, symbolic batch, metadata, initializers."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from portanet.ir import BATCH, GraphBuilder, read_metadata
from portanet.ir.builder import CANONICAL_OPSET
from portanet.ir.io import save_onnx
from portanet.ir.metadata import sha256_file
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY, source_of


def _conv_relu_model(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    src = tmp_path / "src.bin"
    src.write_bytes(b"source model bytes")
    b = GraphBuilder("testfw", name="g")
    x = b.add_input("data", [BATCH, 3, 6, 6])
    with b.layer("conv1", "Convolution"):
        wv = b.initializer("conv1_w", w)
        y = b.op("Conv", [x, wv], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, outputs=["conv1"])
    with b.layer("relu1", "ReLU"):
        z = b.op("Relu", [y], outputs=["conv1"])  # in-place in the source: name must be made unique
    b.add_output(z, "prob")
    return b.build(source_files=[src], options={"input_shape": "1x3x6x6"}), w, src


def test_provenance_names_and_metadata(tmp_path):
    model, _, src = _conv_relu_model(tmp_path)
    nodes = list(model.graph)
    assert [source_of(n) for n in nodes] == [("conv1", "Convolution"), ("relu1", "ReLU")]
    names = [v.name for n in nodes for v in n.outputs]
    assert len(set(names)) == len(names)
    assert model.graph.outputs[0].name == "prob"
    assert model.opset_imports[""] == CANONICAL_OPSET
    inp = model.graph.inputs[0]
    assert str(inp.shape[0]) == BATCH or getattr(inp.shape[0], "value", None) == BATCH
    md = read_metadata(model)
    assert md["portanet.source_framework"] == "testfw"
    assert md["portanet.source_files"] == [{"file": "src.bin", "sha256": sha256_file(src)}]
    assert md["portanet.options"] == {"input_shape": "1x3x6x6"}
    assert "portanet.version" in md


def test_built_model_runs_like_numpy(tmp_path):
    """ORT on the built model equals an independent numpy conv+relu."""
    model, w, _ = _conv_relu_model(tmp_path)
    path = save_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # (N, C, 6, 6, 3, 3)
    ref = np.maximum(np.einsum("nchwij,ocij->nohw", win, w), 0)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_node_metadata_survives_serialization(tmp_path):
    import onnx

    model, _, _ = _conv_relu_model(tmp_path)
    path = save_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    props = [{p.key: p.value for p in n.metadata_props} for n in proto.graph.node]
    assert props[0] == {SOURCE_KEY: "conv1", SOURCE_TYPE_KEY: "Convolution"}
    assert json.loads({p.key: p.value for p in proto.metadata_props}["portanet.options"]) == {"input_shape": "1x3x6x6"}


def test_const_is_deduplicated_and_initializers_unique():
    b = GraphBuilder("t")
    c1 = b.const(np.array([1, 2], np.int64))
    c2 = b.const(np.array([1, 2], np.int64))
    c3 = b.const(np.array([1, 2], np.int32))
    assert c1 is c2 and c3 is not c1
    a = b.initializer("w", np.zeros(3, np.float64))
    a2 = b.initializer("w", np.zeros(3, np.float32))
    assert a.name != a2.name
    assert a.const_value.numpy().dtype == np.float32  # float64 sources become float32


@pytest.mark.parametrize("kind", ["input", "initializer"])
def test_output_that_is_input_or_initializer_gets_identity(kind, tmp_path):
    b = GraphBuilder("t")
    x = b.add_input("x", [BATCH, 2])
    v = x if kind == "input" else b.initializer("w", np.ones((1, 2), np.float32))
    b.add_output(v, "y")
    path = save_onnx(b.build(), tmp_path / "m.onnx")
    feeds = {"x": np.arange(4, dtype=np.float32).reshape(2, 2)}
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_array_equal(y, feeds["x"] if kind == "input" else np.ones((1, 2), np.float32))
