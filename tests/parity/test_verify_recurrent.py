"""verify / verify --bisect across recurrent layers and control-flow subgraphs.

References: eager PyTorch and mxnet 1.9.1 (oneDNN on for the RNN op). A damaged conversion
(a changed recurrent attribute, a scaled head) must be reported at the layer that was
damaged, with the recurrent layers before it compared and passing.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import portanet
from portanet.ir.provenance import source_of

torch = pytest.importorskip("torch")

from tests.converters.pytorch.test_pytorch_recurrent import FEATURES, Lstm2Bi, Scripted  # noqa: E402


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def _scale_initializer(model: ir.Model, name: str) -> None:
    v = model.graph.initializers[name]
    v.const_value = ir.tensor(v.const_value.numpy() * 1.5 + 0.05, name=name)


def _set_attr(model: ir.Model, op_type: str, key: str, value: int) -> str:
    """Change attribute ``key`` of the first ``op_type`` node; returns its source layer."""
    node = next(n for n in model.graph if n.op_type == op_type)
    node.attributes[key] = ir.AttrInt64(key, value)
    return source_of(node)[0]


@pytest.fixture(scope="module")
def lstm_module_and_model():
    torch.manual_seed(0)
    module = Lstm2Bi().eval()
    model = portanet.convert(module, example_inputs=(torch.randn(2, 5, FEATURES),))
    return module, model


def test_pytorch_lstm_verify_passes(lstm_module_and_model) -> None:
    module, model = lstm_module_and_model
    report = portanet.verify(module, onnx=model, shapes=[{"x": [1, 4, FEATURES]}, {"x": [3, 11, FEATURES]}],
                             backends=["ort", "torch"])
    assert report.passed, report
    assert {r.backend for r in report.results} == {"ort", "torch"}


@pytest.mark.parametrize("damage", ["head", "rnn"])
def test_pytorch_bisect_finds_the_damaged_layer(lstm_module_and_model, damage: str) -> None:
    module, model = lstm_module_and_model
    bad = _copy(model)
    if damage == "head":
        _scale_initializer(bad, "head.weight")
        expected = "head"
    else:  # the first LSTM node: clip its gates, which changes its outputs
        node = next(n for n in bad.graph if n.op_type == "LSTM")
        node.attributes["clip"] = ir.AttrFloat32("clip", 0.1)
        expected = source_of(node)[0]
    report = portanet.verify(module, onnx=bad, shapes=[{"x": [2, 6, FEATURES]}], backends=["torch"], bisect=True)
    assert not report.passed
    assert report.bisect is not None and report.bisect.layer == expected, report.bisect
    if damage == "head":
        assert report.bisect.last_good is not None  # the recurrent layers before it compared equal


def test_pytorch_scripted_control_flow_verifies(tmp_path) -> None:
    """A TorchScript file with If/Loop: verified against the scripted module on both backends."""
    torch.manual_seed(0)
    path = tmp_path / "ctrl.jit"
    torch.jit.script(Scripted().eval()).save(str(path))
    report = portanet.verify(str(path), input_shapes={"x": ["N", "T", FEATURES]},
                             shapes=[{"x": [2, 5, FEATURES]}, {"x": [1, 8, FEATURES]}], backends=["ort", "torch"])
    assert report.passed, report


mx = pytest.importorskip("model_zoo.mxnet")


@pytest.mark.skipif(mx.mxnet_python() is None, reason="mxnet side environment (make mxnet-env) not installed")
def test_mxnet_gru_verify_and_bisect() -> None:
    from model_zoo.mxnet.recurrent import build_rnn

    folder, manifest = build_rnn()
    sources = [str(folder / "gru_tnc_head-symbol.json"), str(folder / "gru_tnc_head-0000.params")]
    shapes = manifest["gru_tnc_head"]["input_shapes"]
    model = portanet.convert(*sources, input_shapes=shapes)
    report = portanet.verify(*sources, onnx=model, shapes=[{"data": [4, 2, 5]}, {"data": [9, 1, 5]}],
                             backends=["ort", "torch"])
    assert report.passed, report
    # damage the GRU itself: MXNet's GRU resets after the hidden product (linear_before_reset=1)
    bad = _copy(model)
    layer = _set_attr(bad, "GRU", "linear_before_reset", 0)
    report = portanet.verify(*sources, onnx=bad, shapes=[{"data": [4, 2, 5]}], backends=["torch"], bisect=True)
    assert not report.passed and report.bisect.layer == layer
    # damage the head after it: the GRU layer is compared and passes
    bad = _copy(model)
    head_w = next(n for n in bad.graph.initializers if n.endswith("dense0_weight"))
    _scale_initializer(bad, head_w)
    report = portanet.verify(*sources, onnx=bad, shapes=[{"data": [4, 2, 5]}], backends=["ort"], bisect=True)
    assert not report.passed and report.bisect.layer.endswith("dense0_fwd")
    assert report.bisect.last_good is not None and np.isfinite(report.bisect.compared)
