"""portanet.ir.writer: a file written with the weights streamed is the model onnx.save writes
(reference: onnx_ir's own serialization, compared field by field after parsing), for weights
of every plainly stored element type, weights that stay in the proto (small, bfloat16),
tensor metadata, and initializer order; ONNX Runtime runs it."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from portanet.ir.builder import GraphBuilder
from portanet.ir.io import save_onnx
from portanet.ir.writer import serialize_head, write


def _model() -> tuple[ir.Model, np.ndarray]:
    rng = np.random.default_rng(0)
    b = GraphBuilder("test")
    x = b.add_input("x", ["N", 64], np.float32)
    w = rng.standard_normal((64, 300)).astype(np.float32)
    y = b.op("MatMul", [x, b.initializer("w", w)])
    y = b.op("Add", [y, b.initializer("bias", np.arange(300, dtype=np.float32))])  # 1200 bytes: stays inline
    big_int = b.initializer("idx", np.arange(5000, dtype=np.int64) % 300)
    y = b.op("Gather", [y, big_int], {"axis": 1})
    y16 = b.op("Cast", [y], {"to": int(ir.DataType.FLOAT16)})
    y16 = b.op("Mul", [y16, b.initializer("scale16", np.full((1, 5000), 0.5, np.float16))])
    y = b.op("Cast", [y16], {"to": int(ir.DataType.FLOAT)})
    keep = b.initializer("keep", (np.arange(5000) % 3 == 0).reshape(1, 5000))
    y = b.op("Where", [keep, y, b.const(np.float32(0.0))])
    bf_arr = np.ones((1, 5000), ml_dtypes.bfloat16)
    bf = ir.Value(name="bf16", shape=ir.Shape(bf_arr.shape), type=ir.TensorType(ir.DataType.BFLOAT16),
                  const_value=ir.Tensor(bf_arr, dtype=ir.DataType.BFLOAT16, name="bf16"))
    b.initializers.append(bf)
    y = b.op("Add", [y, b.op("Cast", [bf], {"to": int(ir.DataType.FLOAT)})])
    b.add_output(y, "y")
    model = b.build()
    model.graph.initializers["w"].const_value.metadata_props["note"] = "kept"
    ref = np.where((np.arange(5000) % 3 == 0)[None],
                   (np.zeros((2, 64), np.float32) @ w + np.arange(300, dtype=np.float32))[:, np.arange(5000) % 300]
                   .astype(np.float16) * np.float16(0.5), 0.0).astype(np.float32) + 1.0
    return model, ref


def test_streamed_file_is_the_serialized_model(tmp_path) -> None:
    model, ref = _model()
    expected = ir.serde.serialize_model(model)
    proto, arrays = serialize_head(model)
    assert set(arrays) == {"w", "idx", "scale16", "keep"}  # bias is small, bf16 not plain
    write(proto, arrays, tmp_path / "m.onnx")
    got = onnx.load(str(tmp_path / "m.onnx"))
    assert [t.name for t in got.graph.initializer] == [t.name for t in expected.graph.initializer]
    for g, e in zip(got.graph.initializer, expected.graph.initializer):
        assert g.SerializeToString() == e.SerializeToString(), g.name
    got.graph.ClearField("initializer")
    expected.graph.ClearField("initializer")
    assert got.SerializeToString() == expected.SerializeToString()
    # the IR is left as it was
    assert isinstance(model.graph.initializers["w"].const_value, ir.Tensor)


def test_save_onnx_streams_and_runs(tmp_path) -> None:
    model, ref = _model()
    save_onnx(model, tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": np.zeros((2, 64), np.float32)})[0]
    np.testing.assert_array_equal(out, ref)
    save_onnx(model, tmp_path / "m13.onnx", opset=13)  # a conversion: serialized as a whole, as before
    out13 = ort.InferenceSession(str(tmp_path / "m13.onnx")).run(None, {"x": np.zeros((2, 64), np.float32)})[0]
    np.testing.assert_array_equal(out13, ref)
