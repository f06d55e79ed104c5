"""Layers without a handler, traced through Keras' op-level symbolic execution: a user's Layer
subclass with its own weight, Lambda layers, a subclassed keras.Model nested in a functional
one, subclassed models from files and the CLI (keras.applications' LayerScale / CustomScaleLayer:
test_keras_applications.py). References: Keras' own inference; bisection against the Keras runner."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, assert_parity, keras_outputs, random_inputs, to_nchw

keras = pytest.importorskip("keras")
K = keras.ops
L = keras.layers


class Scale(L.Layer):
    """A user layer with its own weight, mixing raw ops (relu, mean) and the weight."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="w")

    def call(self, x, training=None):
        return K.relu(x) * self.w + K.mean(x, axis=-1, keepdims=True)


class Block(keras.Model):
    """A subclassed model nested in a functional one: a Dense then a Scale."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.fc = L.Dense(5, name="fc")
        self.scale = Scale(name="inner_scale")

    def call(self, x):
        return self.scale(self.fc(x))


def custom_model():
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 3), name="x")
    y = L.Conv2D(4, 3, name="conv")(i)
    y = Scale(name="scale")(y)
    y = L.Lambda(lambda t: K.sigmoid(t) * 2.0, name="lam")(y)
    y = Block(name="block")(y)
    return keras.Model(i, y)


def test_custom_layers_parity_both_layouts_both_backends() -> None:
    import portanet
    from portanet.runtime.session import Session

    model = custom_model()
    xs = random_inputs(model)
    (ref,) = keras_outputs(model, xs)
    for nchw in (False, True):
        ir_model = portanet.convert(model, nchw=nchw)
        for backend in ("ort", "torch"):
            s = Session(ir_model, backend=backend)
            got = s.run({s.inputs[0].name: to_nchw(xs[0]) if nchw else xs[0]})[s.outputs[0].name]
            np.testing.assert_allclose(got, to_nchw(ref) if nchw else ref, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{backend} nchw={nchw}")


def test_traced_layers_keep_keras_names_and_trainable_weights() -> None:
    import portanet
    from portanet.ir.provenance import nodes_by_source
    from portanet.runtime.torch_backend.lowering import lower_graph, sanitize

    model = custom_model()
    ir_model = portanet.convert(model)
    by_src = nodes_by_source(ir_model.graph)
    # every node carries the name of the outer-graph Keras layer it comes from
    assert set(by_src) == {"conv", "scale", "lam", "block"}
    assert {n.metadata_props["portanet.source_type"] for n in by_src["scale"]} == {"Scale"}
    # the traced layers' weights are float initializers holding the Keras values ...
    inits = ir_model.graph.initializers
    scale_w = next(v for k, v in inits.items() if k.startswith("scale/w"))
    np.testing.assert_array_equal(scale_w.const_value.numpy(), np.asarray(model.get_layer("scale").w))
    assert any(k.startswith("block/inner_scale/w") for k in inits)
    assert any(k.startswith("fc/kernel") for k in inits)
    # ... and trainable parameters of the torch backend's module
    params = dict(lower_graph(ir_model).named_parameters())
    assert any(sanitize(scale_w.name) in p for p in params), sorted(params)


def test_bisect_names_a_traced_custom_layer() -> None:
    """Corrupt the traced layer's weight: bisection against Keras names the Keras layer."""
    import onnx_ir as ir

    import portanet
    from portanet.parity.verify import verify_model

    model = custom_model()
    ir_model = portanet.convert(model)
    w = next(v for k, v in ir_model.graph.initializers.items() if k.startswith("scale/w"))
    w.const_value = ir.tensor(w.const_value.numpy() * 3.0 + 1.0, name=w.name)
    report = verify_model(model, ir_model, backends=["ort"], bisect=True)
    assert not report.passed
    assert report.bisect is not None and report.bisect.found
    assert (report.bisect.layer, report.bisect.layer_type) == ("scale", "Scale")
    assert report.bisect.last_good == "conv"


# keras.applications' LayerScale (ConvNeXt) and CustomScaleLayer (Inception-ResNet) are traced in
# test_keras_applications.py (every ConvNeXt and InceptionResNetV2, both layouts, both backends)


# -- files and the CLI ----------------------------------------------------------------------
MODULE = textwrap.dedent('''
    import keras
    from keras import ops


    @keras.saving.register_keras_serializable(package="userpkg")
    class Gate(keras.layers.Layer):
        def build(self, shape):
            self.g = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="g")

        def call(self, x):
            return x * ops.sigmoid(self.g)


    @keras.saving.register_keras_serializable(package="userpkg")
    class Net(keras.Model):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")
            self.gate = Gate(name="gate")

        def call(self, x):
            return ops.mean(self.gate(self.conv(x)), axis=[1, 2])
''')


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    """A user's module defining a registered custom layer and a subclassed model, importable as
    ``userlayers_<n>`` (a fresh name per test: Keras' registry is process-wide)."""
    import importlib
    import sys

    name = f"userlayers_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield name, module
    sys.modules.pop(name, None)


def _cli(*args):
    from click.testing import CliRunner

    from portanet.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_cli_custom_layer_needs_import(tmp_path, user_module) -> None:
    import sys

    import portanet

    name, mod = user_module
    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 3), name="x")
    model = keras.Model(i, mod.Gate(name="gate")(L.Conv2D(4, 3, name="conv")(i)))
    path = tmp_path / "gated.keras"
    model.save(path)
    xs = random_inputs(model)
    ref = keras_outputs(model, xs)
    out = tmp_path / "gated.onnx"
    # unregistered (the module not imported): one line naming the class and the flag
    sys.modules.pop(name)
    keras.saving.get_custom_objects().pop("userpkg>Gate", None)
    keras.saving.get_custom_objects().pop("userpkg>Net", None)
    res = _cli("convert", str(path), "-o", str(out))
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Gate" in lines[0] and "--import" in lines[0], lines
    assert not out.exists()
    res = _cli("convert", str(path), "-o", str(out), "--import", name)
    assert res.exit_code == 0, res.output
    got = portanet.Session(portanet.load(out)).run({"x": xs[0]})
    np.testing.assert_allclose(next(iter(got.values())), ref[0], rtol=RTOL, atol=ATOL)
    res = _cli("convert", str(path), "-o", str(out), "--import", "no_such_module_xyz")
    assert res.exit_code == 2 and "no_such_module_xyz" in res.output and "Traceback" not in res.output


def test_cli_subclassed_model_with_input_shape(tmp_path, user_module) -> None:
    import portanet

    name, mod = user_module
    keras.utils.set_random_seed(0)
    model = mod.Net()
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)
    ref = np.asarray(model(x, training=False))
    path = tmp_path / "net.keras"
    model.save(path)
    out = tmp_path / "net.onnx"
    res = _cli("convert", str(path), "-o", str(out), "--import", name, "--input-shape", "1x8x8x3")
    assert res.exit_code == 0, res.output
    ir_model = portanet.load(out)
    assert [d for d in ir_model.graph.inputs[0].shape] == [1, 8, 8, 3]
    got = portanet.Session(ir_model).run({ir_model.graph.inputs[0].name: x})
    np.testing.assert_allclose(next(iter(got.values())), ref, rtol=RTOL, atol=ATOL)
    assert {n.metadata_props["portanet.source"] for n in ir_model.graph} >= {"conv", "gate"}


class TfScale(L.Layer):
    """A layer whose call uses TensorFlow directly (not keras.ops): converted through tf2onnx."""

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="w")

    def call(self, x):
        import tensorflow as tf

        return tf.nn.relu6(x * 4.0) * self.w + tf.math.reduce_mean(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_layer_calling_tensorflow_goes_through_tf2onnx(nchw: bool) -> None:
    import portanet
    from portanet.ir.provenance import nodes_by_source

    keras.utils.set_random_seed(0)
    i = keras.Input((6, 6, 3), name="x")
    y = TfScale(name="tfscale")(L.Conv2D(4, 3, name="conv")(i))
    model = keras.Model(i, L.Conv2D(2, 1, name="head")(y))
    ir_model = portanet.convert(model, nchw=nchw)
    assert set(nodes_by_source(ir_model.graph)) == {"conv", "tfscale", "head"}
    # the layer's weight is an initializer of the graph, under the layer's name
    w = np.asarray(model.get_layer("tfscale").w)
    assert any(k.startswith("tfscale/") and v.const_value is not None and v.const_value.numpy().size == w.size
               and np.allclose(v.const_value.numpy().ravel(), w) for k, v in ir_model.graph.initializers.items())
    assert_parity(ir_model, model, random_inputs(model), nchw)
