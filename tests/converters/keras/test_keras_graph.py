"""Graph walking: Sequential built without Input, nested Sequential, pass-through outputs, a
layer called twice, custom layers and raw keras.ops calls reported in one error."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.keras.conftest import assert_parity, random_inputs

keras = pytest.importorskip("keras")
L = keras.layers


def _built_sequential():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([L.Dense(4, activation="relu"), L.Dense(2)])
    m.build((None, 8))
    return m


def _nested_sequential():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([L.Conv2D(4, 3), L.ReLU()], name="inner")
    return keras.Sequential([keras.Input((7, 7, 3)), inner, L.GlobalAveragePooling2D(), L.Dense(2)])


def _passthrough():
    keras.utils.set_random_seed(0)
    i = keras.Input((5,), name="x")
    return keras.Model(i, [i, L.Dense(2, name="d")(i)])


def _layer_twice():
    keras.utils.set_random_seed(0)
    i = keras.Input((4, 4, 3), name="x")
    conv = L.Conv2D(3, 1, name="conv")
    return keras.Model(i, [conv(i), conv(conv(i))])


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("build", [_built_sequential, _nested_sequential, _passthrough, _layer_twice],
                         ids=lambda f: f.__name__.strip("_"))
def test_graph_shapes(build, nchw: bool) -> None:
    import portanet

    model = build()
    assert_parity(portanet.convert(model, nchw=nchw), model, random_inputs(model), nchw)


def test_output_names() -> None:
    import portanet

    assert [v.name for v in portanet.convert(_passthrough()).graph.outputs] == ["x_out", "d"]
    assert [v.name for v in portanet.convert(_layer_twice()).graph.outputs] == ["conv", "conv_1"]


def test_untraceable_layers_and_ops_in_one_error() -> None:
    """Handler-less layers are traced through keras.ops, or through TensorFlow and tf2onnx; one
    that runs Python inside its graph (tf.numpy_function) converts neither way, and is listed
    with the raw ops that have no handler."""
    import portanet
    from portanet.errors import UnsupportedOpError

    class TfOnly(L.Layer):
        def call(self, x):
            import tensorflow as tf

            y = tf.numpy_function(np.sin, [x], tf.float32)
            return tf.ensure_shape(y, x.shape)

    class Doubler(L.Layer):
        def call(self, x):
            return x * 2

    i = keras.Input((8,), name="x")
    y = keras.ops.sort(L.Dense(3, name="fc")(i))  # a raw op without an ONNX handler
    model = keras.Model(i, [TfOnly(name="c1")(i), TfOnly(name="c2")(y), Doubler(name="fine")(i),
                            L.Lambda(lambda t: t + 1.0, name="lam")(i)])
    with pytest.raises(UnsupportedOpError) as info:
        portanet.convert(model)
    found = {k: sorted(v) for k, v in info.value.unsupported.items()}
    # Keras numbers auto-named ops per process (sort, sort_1, ...)
    assert set(found) == {"TfOnly", "ops.Sort"} and found["TfOnly"] == ["c1", "c2"]
    assert len(found["ops.Sort"]) == 1 and found["ops.Sort"][0].startswith("sort")
    assert "3 unsupported layer(s) of 2 type(s)" in str(info.value)


def test_unbuilt_sequential() -> None:
    import portanet
    from portanet.errors import ConversionError

    with pytest.raises(ConversionError, match="not built"):
        portanet.convert(keras.Sequential([L.Dense(2)]))


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_unknown_spatial_size_same_padding(nchw: bool) -> None:
    """(None, None, 3) inputs: TensorFlow's SAME padding becomes auto_pad=SAME_UPPER, exact at any size."""
    import portanet

    keras.utils.set_random_seed(0)
    i = keras.Input((None, None, 3), name="x")
    x = L.Conv2D(4, 3, strides=2, padding="same")(i)
    x = L.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = L.AveragePooling2D(3, 2, padding="same")(x)
    x = L.MaxPooling2D(3, 2, padding="same")(x)
    model = keras.Model(i, [x, L.GlobalAveragePooling2D()(x)])
    ir_model = portanet.convert(model, nchw=nchw)
    rng = np.random.default_rng(0)
    for hw in [(17, 23), (32, 9)]:
        xs = [rng.standard_normal((2, *hw, 3)).astype(np.float32)]
        assert_parity(ir_model, model, xs, nchw)
