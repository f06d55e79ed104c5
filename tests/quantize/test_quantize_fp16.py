"""float16 (``optimize --precision fp16``) on PyTorch zoo models, checked against float32 at the
float16 tolerances of ``portanet.quantize.fp16`` (scale-relative 1e-2, absolute 1e-3; the
reasoning is in that module's docstring). References: PyTorch eager in float32 (the source
framework) and the float32 conversion on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from portanet.cli import cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["resnet18", "mobilenetv2"])
def zoo(request):
    import hashlib

    import portanet
    from model_zoo.common import cache_dir, cached
    from model_zoo.pytorch import models
    from model_zoo.pytorch.models import ZOO, build

    module = build(request.param)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, *ZOO[request.param].input_shape))
                         .astype(np.float32))
    # the conversion is cached, keyed by the zoo builder's source (like the zoo's own files)
    key = hashlib.sha256(open(models.__file__, "rb").read()).hexdigest()[:12]
    path = cached(cache_dir("quantize") / f"{request.param}-{key}.onnx",
                  lambda tmp: portanet.save(portanet.convert(module, example_inputs=(x[:2],)), tmp))
    with torch.no_grad():
        ref = module(x).numpy()
    return request.param, path, x.numpy(), ref


def test_fp16_matches_float32_at_float16_tolerance(zoo, tmp_path):
    from portanet.quantize import FP16_ATOL, FP16_RTOL

    name, path, x, ref = zoo
    out = tmp_path / f"{name}.fp16.onnx"
    r = CliRunner().invoke(cli, ["optimize", str(path), "-o", str(out), "--precision", "fp16"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "float16 vs float32" in r.output
    m = onnx.load(str(out))
    # float32 interface, float16 weights
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*m.graph.input, *m.graph.output])
    kinds = {t.data_type for t in m.graph.initializer if len(t.dims) >= 2}
    assert kinds == {TensorProto.FLOAT16}
    assert out.stat().st_size < 0.55 * path.stat().st_size
    import onnxruntime as ort

    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {m.graph.input[0].name: x})[0]
    f32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {m.graph.input[0].name: x})[0]
    for reference in (ref, f32):  # PyTorch eager float32, ORT float32
        err = float(np.max(np.abs(got - reference)))
        assert err <= FP16_ATOL + FP16_RTOL * float(np.max(np.abs(reference))), (name, err)
    # float16 is not float32: the conversion really changed the arithmetic
    assert float(np.max(np.abs(got - f32))) > 0


def test_overflow_prone_ops_stay_float32():
    """LRN sums squares of activations: 256**2 already overflows float16, so it stays float32."""
    from portanet.ir.io import load_onnx
    from portanet.quantize import to_float16

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("LRN", ["c"], ["l"], size=3, name="lrn"), helper.make_node("Relu", ["l"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], [w])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "lrn.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
        half = to_float16(load_onnx(p))
    from portanet.runtime.session import Session

    by_op = {n.op_type: n for n in half.graph}
    assert by_op["Conv"].inputs[1].const_value.dtype.name == "FLOAT16"
    assert by_op["LRN"].inputs[0].dtype.name == "FLOAT"
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32) * 100
    out = Session(half).run({"x": x})["y"]
    assert np.isfinite(out).all()


def test_fp16_refuses_a_model_without_float_weights(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    p = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(cli, ["optimize", str(p), "-o", str(out), "--precision", "fp16"], catch_exceptions=False)
    assert r.exit_code == 2 and "no float32 weights" in r.output and not out.exists()
