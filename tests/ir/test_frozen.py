"""Frozen initializers: every importer marks the weights its framework does not train, the
marks survive save/load, the torch backend lowers them to constants, training leaves them
bit-identical and ``inspect`` counts them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import portanet
from portanet.ir.frozen import FROZEN_KEY, frozen_initializers, frozen_names
from portanet.ir.io import load_onnx, save_onnx


def _values(model, names):
    return {n: np.array(model.graph.initializers[n].const_value.numpy()) for n in names}


def _train_one_epoch(model, npz, **kw):
    from portanet.runtime.trainer import Trainer

    trainer = Trainer(model, epochs=1, lr=0.05, normalize=False, seed=0, **kw)
    trainer.fit(npz)
    return trainer.export()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """256 training and 64 test digits of the embedded MNIST subset, as .npz."""
    from portanet.data.datasets import load_data

    s = load_data()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x=s.train.x[:256], y=s.train.y[:256], x_test=s.test.x[:64], y_test=s.test.y[:64])
    return path


# ------------------------------------------------------------------------------- MXNet
@pytest.fixture(scope="module")
def mxnet_fix_gamma(tmp_path_factory):
    """The case-study MNIST CNN built by mxnet (Gluon), with its BatchNorms' fix_gamma set as
    Gluon's ``BatchNorm(scale=False)`` exports them."""
    from model_zoo import mxnet as mxzoo

    try:
        folder = mxzoo.build(("case_study",))
    except RuntimeError as exc:
        pytest.skip(f"mxnet reference models unavailable: {exc}")
    doc = json.loads((folder / "mnist_cnn-symbol.json").read_text())
    for node in doc["nodes"]:
        if node["op"] == "BatchNorm":
            node.setdefault("attrs", {})["fix_gamma"] = "True"
    out = tmp_path_factory.mktemp("mx")
    sym = out / "mnist_cnn-symbol.json"
    sym.write_text(json.dumps(doc))
    params = out / "mnist_cnn-0000.params"
    params.write_bytes((folder / "mnist_cnn-0000.params").read_bytes())
    return sym, params


def test_mxnet_fix_gamma_is_frozen_and_stays_after_training(mxnet_fix_gamma, digits, tmp_path):
    model = portanet.convert(*mxnet_fix_gamma, input_shapes={"data": [1, 1, 28, 28]})
    marks = frozen_initializers(model)
    bn_scales = [n.inputs[1].name for n in model.graph if n.op_type == "BatchNormalization"]
    assert len(bn_scales) == 2 and set(bn_scales) <= set(marks), marks
    assert all(r == "mxnet BatchNorm fix_gamma" for r in marks.values())
    # the mark survives a save/load round trip (model metadata)
    path = tmp_path / "m.onnx"
    save_onnx(model, path)
    model = load_onnx(path)
    assert frozen_names(model) == set(marks)
    before = _values(model, marks)
    others = _values(model, [n for n in model.graph.initializers if n not in marks
                              and model.graph.initializers[n].dtype.is_floating_point()])
    trained = _train_one_epoch(model, digits)
    after = _values(trained, marks)
    for name in marks:  # bit-identical
        assert after[name].tobytes() == before[name].tobytes(), name
    # ... while the trainable weights did change
    changed = [n for n, v in _values(trained, others).items() if not np.array_equal(v, others[n])]
    assert changed


def test_mxnet_nofix_gamma_is_trainable(mxnet_fix_gamma):
    from model_zoo import mxnet as mxzoo

    folder = mxzoo.build(("case_study",))
    model = portanet.convert(folder / "mnist_cnn-symbol.json", folder / "mnist_cnn-0000.params",
                             input_shapes={"data": [1, 1, 28, 28]})
    assert frozen_names(model) == set()  # Gluon's default BatchNorm(scale=True): fix_gamma=False


# ------------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def keras_rescaling(tmp_path_factory):
    keras = pytest.importorskip("keras")
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    x = layers.Rescaling(1 / 255.0, offset=-0.5, name="rescale")(inp)
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = layers.BatchNormalization(scale=False, name="bn")(x)
    x = layers.Flatten()(x)
    frozen_dense = layers.Dense(16, activation="relu", name="frozen_dense")
    x = frozen_dense(x)
    out = layers.Dense(10, name="head")(x)
    model = keras.Model(inp, out)
    frozen_dense.trainable = False
    path = tmp_path_factory.mktemp("keras") / "rescaling.keras"
    model.save(path)
    return path


def test_keras_rescaling_and_trainable_false_are_frozen(keras_rescaling, digits):
    model = portanet.convert(keras_rescaling, nchw=True)
    marks = frozen_initializers(model)
    by_reason: dict[str, set[str]] = {}
    for name, reason in marks.items():
        by_reason.setdefault(reason, set()).add(name)
    assert by_reason["keras Rescaling constant"] == {"rescale/scale", "rescale/offset"}
    assert by_reason["keras trainable=False"] == {"frozen_dense/kernel", "frozen_dense/bias"}
    assert by_reason["keras BatchNormalization without scale/center"] == {"bn/gamma"}
    # the Keras model agrees on what it trains: its trainable weights are exactly the others
    keras = pytest.importorskip("keras")
    km = keras.saving.load_model(keras_rescaling)
    trainable = {w.path for w in km.trainable_weights}
    assert not any(t.startswith(("frozen_dense", "rescale")) for t in trainable)
    before = _values(model, marks)
    trained = _train_one_epoch(model, digits)
    for name, arr in _values(trained, marks).items():
        assert arr.tobytes() == before[name].tobytes(), name
    assert not np.array_equal(_values(trained, ["conv/kernel"])["conv/kernel"],
                              _values(portanet.convert(keras_rescaling, nchw=True), ["conv/kernel"])["conv/kernel"])


# ------------------------------------------------------------------------------- Caffe
def test_caffe_lr_mult_zero_and_batchnorm_without_scale(tmp_path):
    from tests.converters.caffe.conftest import net_text, write_net

    text = net_text('''
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        param { lr_mult: 0 } param { lr_mult: 2 }
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 3 } }
''', input_shape=(1, 3, 8, 8))
    proto, weights = write_net(tmp_path, text)
    model = portanet.convert(proto, weights)
    assert frozen_initializers(model) == {
        "conv_w": "caffe lr_mult: 0",
        "bn_scale": "caffe BatchNorm without Scale",
        "bn_bias": "caffe BatchNorm without Scale",
    }, frozen_initializers(model)


# ----------------------------------------------------------------------------- PyTorch
def test_pytorch_requires_grad_false():
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                            torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))
    m[0].weight.requires_grad_(False)
    m[1].bias.requires_grad_(False)
    model = portanet.convert(m, example_inputs=torch.randn(2, 1, 8, 8))
    assert frozen_initializers(model) == {"0.weight": "pytorch requires_grad=False",
                                          "1.bias": "pytorch requires_grad=False"}


# ----------------------------------------------------------------- backend, inspect
def test_torch_backend_lowers_frozen_to_constants_and_inspect_counts(mxnet_fix_gamma):
    from portanet.inspect import describe
    from portanet.runtime.torch_backend import lower

    model = portanet.convert(*mxnet_fix_gamma, input_shapes={"data": [1, 1, 28, 28]})
    names = frozen_names(model)
    module = lower(model)
    trained_ir_names = set(module.param_ir_names.values()) if hasattr(module, "param_ir_names") else set()
    params = {n for n, _ in module.named_parameters()}
    assert names and not (names & trained_ir_names), "frozen initializers must not be parameters or buffers"
    assert params
    info = describe(model)["parameters"]
    assert info["frozen_tensors"] == len(names)
    assert info["frozen"] == sum(model.graph.initializers[n].const_value.size for n in names)
    assert json.loads(model.metadata_props[FROZEN_KEY]).keys() == names
