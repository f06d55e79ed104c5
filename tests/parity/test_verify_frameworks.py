"""verify with Keras, Caffe, MXNet and ONNX sources: zoo models pass; a layer corrupted in the
converted ONNX fails with exit 3 and --bisect names exactly that layer; Keras gradient parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import portanet
from portanet.cli import cli


def _corrupted_run(tmp_path, corrupt, sources, layer, extra=()):
    """Convert, save a copy with ``layer`` corrupted, run the CLI verify with --bisect."""
    model = portanet.convert(*sources)
    ok = tmp_path / "ok.onnx"
    portanet.save(model, ok)
    corrupt(model, layer)
    bad = tmp_path / "bad.onnx"
    portanet.save(model, bad)
    rep = tmp_path / "report.json"
    res = CliRunner().invoke(cli, ["verify", *map(str, sources), "--onnx", str(bad), "--bisect", "--backends", "ort",
                                   "--repro-dir", str(tmp_path / "repro"), "--json", str(rep), *extra])
    return ok, res, json.loads(rep.read_text()) if rep.exists() else None


# ------------------------------------------------------------------------------------ Keras
@pytest.fixture(scope="module")
def keras_cnn():
    pytest.importorskip("keras")
    from model_zoo.keras.models import save_model

    return save_model("case_study_cnn")


def test_keras_verify_passes_and_gradients_match(keras_cnn):
    report = portanet.verify(keras_cnn, train=True)
    assert report.passed, report.summary()
    assert {r.backend for r in report.results} == {"ort", "torch"}
    g = report.gradients
    assert len(g.params) == 10 and not g.unmatched  # 3 convs + 2 dense layers x (kernel, bias)
    assert g.params["conv2/kernel"][1].shape == [32, 16, 4, 4]  # compared in the IR's OIHW layout


def test_keras_tampered_gradient_is_caught(keras_cnn):
    from portanet.converters.keras.importer import load_keras_file
    from portanet.parity.gradients import compare_gradients, ir_gradients, keras_gradients, target_for

    model = portanet.convert(keras_cnn)
    keras_model = load_keras_file(keras_cnn)
    feeds = {"image": np.random.default_rng(0).standard_normal((3, 28, 28, 1)).astype(np.float32)}
    targets = target_for({model.graph.outputs[0].name: np.zeros((3, 10), np.float32)}, 0)
    loss_src, params = keras_gradients(keras_model, feeds, targets, nchw=False)
    loss_ir, grads, values = ir_gradients(model, feeds, targets)
    clean = compare_gradients(model, params, loss_src, loss_ir, grads, values, rtol=1e-4, atol=1e-5)
    assert clean.passed
    # tamper with one real Keras gradient: only that parameter fails
    victim = next(p for p in params if p.name.endswith("fc1/kernel"))
    victim.grad = victim.grad * 1.01
    tampered = compare_gradients(model, params, loss_src, loss_ir, grads, values, rtol=1e-4, atol=1e-5)
    assert not tampered.passed
    assert [k for k, (_, s) in tampered.params.items() if not s.passed] == [victim.name]


def test_keras_corrupted_layer_is_named(keras_cnn, tmp_path, corrupt):
    _, res, report = _corrupted_run(tmp_path, corrupt, [keras_cnn], "conv2")
    assert res.exit_code == 3, res.output
    assert "first divergent layer: conv2 (Conv2D)" in res.output
    assert report["bisect"]["layer"] == "conv2" and report["bisect"]["last_good"] == "pool1"


def test_keras_two_inputs_three_outputs_shared_layers():
    pytest.importorskip("keras")
    from model_zoo.keras.models import save_model

    path = save_model("two_input_shared")
    report = portanet.verify(path, shapes=["left=3x16x16x3", "right=3x16x16x3"], train=True, bisect=True)
    assert report.passed, report.summary()
    assert {r.output for r in report.results} == {"head", "diff", "similarity"}
    assert report.input_shapes == [{"left": [3, 16, 16, 3], "right": [3, 16, 16, 3]}]
    # shared conv/bn used by both towers: one parameter each, gradients summed over both uses
    assert len(report.gradients.params) == 6 and not report.gradients.unmatched
    assert report.bisect is not None and not report.bisect.found and report.bisect.compared > 0


# ------------------------------------------------------------------------------------ Caffe
@pytest.fixture(scope="module")
def caffe_resnet():
    pytest.importorskip("cv2")
    from model_zoo.caffe.writer import build

    return build("resnet")


def test_caffe_verify_passes(caffe_resnet):
    report = portanet.verify(*caffe_resnet)
    assert report.passed, report.summary()
    assert len(report.results) == 4  # ort and torch at batch 1 and 2


def test_caffe_corrupted_layer_is_named(caffe_resnet, tmp_path, corrupt):
    _, res, report = _corrupted_run(tmp_path, corrupt, list(caffe_resnet), "res2a_branch2b")
    assert res.exit_code == 3, res.output
    assert "first divergent layer: res2a_branch2b (Convolution)" in res.output
    assert report["bisect"]["layer"] == "res2a_branch2b"
    # the repro reproduces the divergence on its own
    import onnxruntime as ort

    repro = tmp_path / "repro"
    sess = ort.InferenceSession(str(repro / "repro.onnx"), providers=["CPUExecutionProvider"])
    with np.load(repro / "repro_inputs.npz") as z:
        feeds = dict(z)
    with np.load(repro / "repro_expected.npz") as z:
        (expected,) = z.values()
    (got,) = sess.run(None, feeds)
    assert not np.allclose(got, expected, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ MXNet
@pytest.fixture(scope="module")
def mxnet_cnn():
    from model_zoo.mxnet import build, mxnet_python

    if mxnet_python() is None:
        pytest.skip("the mxnet side environment (.venv-mxnet, `make mxnet-env`) is not installed")
    d = build(("case_study",))
    return d / "mnist_cnn-symbol.json", d / "mnist_cnn-0000.params"


@pytest.mark.mxnet
def test_mxnet_verify_passes_on_real_digits(mxnet_cnn):
    from portanet.data import default_data_dir

    # the symbol declares no input shape; real MNIST test digits give it one (batches 1 and 8)
    report = portanet.verify(*mxnet_cnn, data=default_data_dir(), backends=["ort"])
    assert report.passed, report.summary()
    assert report.input_kind == "data" and [s["data"] for s in report.input_shapes] == [[1, 1, 28, 28], [8, 1, 28, 28]]


@pytest.mark.mxnet
def test_mxnet_corrupted_layer_is_named(mxnet_cnn, tmp_path, corrupt):
    _, res, report = _corrupted_run(tmp_path, corrupt, list(mxnet_cnn), "mnistcnn_conv1_fwd",
                                    extra=["--shapes", "2x1x28x28"])
    assert res.exit_code == 3, res.output
    assert "first divergent layer: mnistcnn_conv1_fwd (Convolution)" in res.output
    assert report["bisect"]["layer"] == "mnistcnn_conv1_fwd"


# ------------------------------------------------------------------------------------- ONNX
def test_onnx_source_three_way(tmp_path):
    """An ONNX source: onnx's reference evaluator vs ONNX Runtime vs the torch backend."""
    torch = pytest.importorskip("torch")
    from model_zoo.pytorch import build

    path = tmp_path / "lenet.onnx"
    portanet.save(portanet.convert(build("lenet5"), example_inputs=torch.randn(1, 1, 32, 32)), path)
    report = portanet.verify(path, bisect=True)
    assert report.framework == "onnx" and report.passed, report.summary()
    assert report.bisect is not None and not report.bisect.found and report.bisect.compared >= 8
