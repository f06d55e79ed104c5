"""Whole-model parity of every Keras zoo model: ONNX Runtime on the converted model vs Keras,
rtol 1e-4 / atol 1e-5, through the default NHWC interface and ``nchw``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, assert_parity, random_inputs, run_converted, to_nchw

keras = pytest.importorskip("keras")

#: zoo keras.applications models with their 1000-class softmax head, checked here for that head and the
#: pre-classifier probe (MobileNetV2 at 96x96 also meets odd sizes at its stride-2 "same" convolutions);
#: every constructor's logits are checked in all four cells by test_keras_applications.py
APPS = ["resnet50", "mobilenetv2"]
LAYOUTS = pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])


@LAYOUTS
@pytest.mark.parametrize("name,suffix", [("case_study_cnn", ".keras"), ("case_study_cnn", ".h5"),
                                         ("two_input_shared", ".keras")])
def test_zoo_file_parity(keras_zoo, name: str, suffix: str, nchw: bool) -> None:
    import portanet
    from model_zoo.keras.models import save_model

    path = save_model(name, suffix)
    model = keras_zoo(name)  # same seed: the same weights as the file
    ir_model = portanet.convert(str(path), nchw=nchw)
    assert [v.name for v in ir_model.graph.outputs] == [t._keras_history.operation.name for t in model.outputs]
    assert [v.name for v in ir_model.graph.inputs] == [t._keras_history.operation.name for t in model.inputs]
    assert_parity(ir_model, model, random_inputs(model, batch=3), nchw)


def test_case_study_cnn_on_mnist_digits(keras_zoo) -> None:
    """Real digits from the embedded MNIST copy: same class scores as Keras."""
    import gzip
    from pathlib import Path

    import portanet

    data = Path(portanet.__file__).parent / "data" / "mnist-10k" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(data, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)
    x = (raw[: 8 * 784].reshape(8, 28, 28, 1) / 255.0).astype(np.float32)
    model = keras_zoo("case_study_cnn")
    assert_parity(portanet.convert(model), model, [x], nchw=False)


def _features_layer(model) -> str:
    """The layer feeding the classifier (pre-softmax features: a stronger check than probabilities)."""
    head = model.get_layer("predictions")
    return head._inbound_nodes[0].input_tensors[0]._keras_history.operation.name


@LAYOUTS
@pytest.mark.parametrize("name", APPS)
def test_application_parity(keras_zoo, name: str, nchw: bool) -> None:
    import onnx_ir as ir

    import portanet
    from portanet.ir.provenance import last_value_of_layer

    model = keras_zoo(name)
    ir_model = portanet.convert(model, nchw=nchw)
    xs = random_inputs(model, batch=2)
    assert_parity(ir_model, model, xs, nchw)
    # the pre-classifier features too (softmax over 1000 classes of a random net is nearly flat)
    feat = _features_layer(model)
    value = last_value_of_layer(ir_model.graph, feat)
    assert value is not None, feat
    probe = ir.Model(ir_model.graph, ir_version=ir_model.ir_version)
    probe.graph.outputs.append(value)
    got = run_converted(probe, xs, nchw)[-1]
    ref = np.asarray(keras.Model(model.inputs[0], model.get_layer(feat).output)(xs[0], training=False))
    ref = to_nchw(ref) if (nchw and ref.ndim >= 3) else ref
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
