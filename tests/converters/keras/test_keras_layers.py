"""Per-layer parity against Keras on random inputs, in the default (NHWC) interface and with
``nchw``; channels_first variants where Keras runs them on CPU."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pytest

from tests.converters.keras.conftest import assert_parity, random_inputs

keras = pytest.importorskip("keras")
L = keras.layers


def seq(shape, *layers, dtype="float32"):
    """A functional model applying ``layers`` in order to one input of ``shape``."""
    keras.utils.set_random_seed(1)
    x = inp = keras.Input(shape, dtype=dtype, name="x")
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x)


def conv_then(*layers, shape=(9, 9, 3)):
    """A conv first, so the tested layer sees a channels-first IR value (layout tracking)."""
    return seq(shape, L.Conv2D(4, 3, padding="same"), *layers)


def merged(layer_fn):
    keras.utils.set_random_seed(1)
    a = keras.Input((6, 6, 4), name="a")
    b = keras.Input((6, 6, 4), name="b")
    c = L.Conv2D(4, 1, name="c")(b)  # one input channels-first in the IR, one not
    return keras.Model([a, b], layer_fn()([a, c]))


def _bn_random(model):
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, c).astype(np.float32))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.5, c).astype(np.float32))
    return model


def bn(*args, shape, pre=(), **kw):
    return lambda: _bn_random(seq(shape, *pre, L.BatchNormalization(*args, **kw)))


CF = "channels_first"

CASES: dict[str, Callable[[], object]] = {
    # -- convolutions
    "conv1d_valid": lambda: seq((11, 3), L.Conv1D(4, 3)),
    "conv1d_same_s2": lambda: seq((11, 3), L.Conv1D(4, 4, strides=2, padding="same")),
    "conv1d_causal_d2": lambda: seq((11, 3), L.Conv1D(4, 3, padding="causal", dilation_rate=2)),
    "conv2d_same_s2_odd": lambda: seq((9, 10, 3), L.Conv2D(5, 3, strides=2, padding="same", activation="relu")),
    "conv2d_same_k4": lambda: seq((8, 8, 3), L.Conv2D(5, 4, padding="same")),
    "conv2d_valid_rect": lambda: seq((9, 10, 3), L.Conv2D(5, (3, 2), strides=(2, 1), use_bias=False)),
    "conv2d_dilated": lambda: seq((12, 12, 3), L.Conv2D(4, 3, dilation_rate=2, padding="same")),
    "conv2d_groups": lambda: seq((8, 8, 4), L.Conv2D(6, 3, groups=2)),
    "conv3d_same_s2": lambda: seq((5, 6, 7, 2), L.Conv3D(3, 3, strides=2, padding="same")),
    "depthwise2d_m2_s2": lambda: seq((9, 9, 3), L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2)),
    "depthwise1d": lambda: seq((10, 3), L.DepthwiseConv1D(3, depth_multiplier=2)),
    "separable2d": lambda: seq((9, 9, 3), L.SeparableConv2D(5, 3, padding="same", depth_multiplier=2)),
    "separable1d": lambda: seq((10, 3), L.SeparableConv1D(4, 3, strides=2)),
    "convT2d_valid_s2": lambda: seq((5, 6, 3), L.Conv2DTranspose(4, 3, strides=2)),
    "convT2d_same_s2": lambda: seq((5, 6, 3), L.Conv2DTranspose(4, 3, strides=2, padding="same")),
    "convT2d_same_k1_s2": lambda: seq((5, 5, 3), L.Conv2DTranspose(4, 1, strides=2, padding="same")),
    "convT2d_outpad": lambda: seq((5, 5, 3), L.Conv2DTranspose(4, 3, strides=2, output_padding=1)),
    "convT1d_same": lambda: seq((7, 3), L.Conv1DTranspose(4, 4, strides=2, padding="same")),
    "convT3d_valid": lambda: seq((3, 4, 4, 2), L.Conv3DTranspose(3, 2, strides=2)),
    # -- dense
    "dense_rank2": lambda: seq((7,), L.Dense(5, activation="sigmoid")),
    "dense_rank3": lambda: seq((4, 7), L.Dense(5)),
    "dense_on_image": lambda: conv_then(L.Dense(3)),
    # -- normalization
    "bn_image": bn(shape=(6, 6, 3), pre=(L.Conv2D(4, 1),)),
    "bn_rank2": bn(shape=(7,), center=False),
    "bn_rank3_axis1": bn(axis=1, shape=(4, 5), scale=False),
    "layernorm_last": lambda: seq((4, 6), L.LayerNormalization()),
    "layernorm_image_all": lambda: conv_then(L.LayerNormalization(axis=[1, 2, 3])),
    "layernorm_image_last": lambda: conv_then(L.LayerNormalization(axis=-1, epsilon=1e-5)),
    # -- activation layers
    "relu_max6": lambda: seq((10,), L.ReLU(max_value=6.0)),
    "relu_slope_thr": lambda: seq((10,), L.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.3)),
    "relu_slope": lambda: seq((10,), L.ReLU(negative_slope=0.2)),
    "leaky_relu": lambda: conv_then(L.LeakyReLU(negative_slope=0.15)),
    "prelu_shared": lambda: conv_then(L.PReLU(alpha_initializer="random_uniform", shared_axes=[1, 2])),
    "prelu_full": lambda: conv_then(L.PReLU(alpha_initializer="random_uniform")),
    "elu_layer": lambda: seq((10,), L.ELU(alpha=0.7)),
    "softmax_image": lambda: conv_then(L.Softmax()),
    "softmax_axis1": lambda: seq((4, 6), L.Softmax(axis=1)),
    "activation_softmax_image": lambda: conv_then(L.Activation("softmax")),
    # -- pooling
    "maxpool2d_same_s2": lambda: conv_then(L.MaxPooling2D(3, 2, padding="same")),
    "maxpool2d_valid": lambda: conv_then(L.MaxPooling2D(2)),
    "avgpool2d_same_s2": lambda: conv_then(L.AveragePooling2D(3, 2, padding="same")),
    "avgpool2d_same_s1": lambda: conv_then(L.AveragePooling2D(3, 1, padding="same")),
    "avgpool2d_valid_rect": lambda: conv_then(L.AveragePooling2D((2, 3), (1, 2))),
    "maxpool1d_same": lambda: seq((11, 3), L.MaxPooling1D(3, 2, padding="same")),
    "avgpool1d_same": lambda: seq((11, 3), L.AveragePooling1D(2, padding="same")),
    "maxpool3d_same": lambda: seq((5, 5, 5, 2), L.MaxPooling3D(2, padding="same")),
    "avgpool3d_valid": lambda: seq((4, 5, 6, 2), L.AveragePooling3D(2)),
    "gap2d": lambda: conv_then(L.GlobalAveragePooling2D()),
    "gap2d_keepdims": lambda: conv_then(L.GlobalAveragePooling2D(keepdims=True)),
    "gmp2d_keepdims": lambda: conv_then(L.GlobalMaxPooling2D(keepdims=True)),
    "gap1d": lambda: seq((7, 3), L.GlobalAveragePooling1D()),
    "gmp1d": lambda: seq((7, 3), L.GlobalMaxPooling1D()),
    "gap3d": lambda: seq((3, 4, 5, 2), L.GlobalAveragePooling3D()),
    # -- reshaping
    "flatten_dense": lambda: conv_then(L.Flatten(), L.Dense(4)),
    "flatten_1x1": lambda: conv_then(L.Conv2D(5, 9), L.Flatten(), L.Dense(4)),
    "flatten_1xw": lambda: conv_then(L.Flatten(), L.Dense(4), shape=(1, 6, 3)),
    "reshape": lambda: conv_then(L.Reshape((9, 36))),
    "reshape_infer": lambda: conv_then(L.Reshape((-1, 4))),
    "permute": lambda: conv_then(L.Permute((3, 1, 2))),
    "permute_rank3": lambda: seq((4, 6), L.Permute((2, 1))),
    "zeropad2d": lambda: conv_then(L.ZeroPadding2D(((1, 2), (0, 3)))),
    "zeropad1d": lambda: seq((6, 3), L.ZeroPadding1D((2, 1))),
    "zeropad3d": lambda: seq((3, 3, 3, 2), L.ZeroPadding3D(1)),
    "cropping2d": lambda: conv_then(L.Cropping2D(((1, 2), (0, 3)))),
    "cropping1d": lambda: seq((8, 3), L.Cropping1D((1, 2))),
    "upsampling2d_nearest": lambda: conv_then(L.UpSampling2D((2, 3))),
    "upsampling2d_bilinear": lambda: conv_then(L.UpSampling2D(2, interpolation="bilinear")),
    "upsampling1d": lambda: seq((5, 3), L.UpSampling1D(3)),
    "repeat_vector": lambda: seq((5,), L.RepeatVector(3)),
    # -- identity at inference
    "dropouts": lambda: conv_then(L.Dropout(0.5), L.SpatialDropout2D(0.3), L.GaussianNoise(1.0),
                                  L.GaussianDropout(0.4), L.Identity()),
    # -- preprocessing
    "rescaling": lambda: seq((5, 5, 3), L.Rescaling(1 / 127.5, offset=-1.0)),
    "rescaling_per_channel": lambda: conv_then(L.Rescaling([0.5, 2.0, -1.0, 3.0], offset=[0.1, 0.2, 0.3, 0.4])),
    "normalization": lambda: conv_then(L.Normalization(mean=[0.1, -0.2, 0.3, 0.0], variance=[0.5, 2.0, 1.0, 0.01])),
    # a variance below epsilon^2 divides by epsilon (1e-7); on the raw input, so no upstream
    # rounding difference is amplified 1e7 times
    "normalization_eps": lambda: seq((4, 3), L.Normalization(mean=[0.1, -0.2, 0.3], variance=[0.5, 2.0, 1e-16])),
    "normalization_invert": lambda: seq((6,), L.Normalization(mean=0.5, variance=4.0, invert=True)),
    "resizing_up_bilinear": lambda: conv_then(L.Resizing(13, 17)),
    "resizing_down_bilinear": lambda: conv_then(L.Resizing(4, 5)),
    "resizing_nearest": lambda: conv_then(L.Resizing(13, 6, interpolation="nearest")),
    # -- channels_first (only layers TensorFlow runs channels_first on CPU; its CPU Conv2D refuses NCHW)
    "cf_maxpool2d_same": lambda: seq((3, 9, 9), L.MaxPooling2D(3, 2, padding="same", data_format=CF)),
    "cf_avgpool2d_same": lambda: seq((3, 9, 9), L.AveragePooling2D(3, 2, padding="same", data_format=CF)),
    "cf_gap_bn": lambda: _bn_random(seq((3, 5, 5), L.BatchNormalization(axis=1),
                                        L.GlobalAveragePooling2D(data_format=CF))),
    "cf_flatten_dense": lambda: seq((3, 4, 5), L.Flatten(data_format=CF), L.Dense(3)),
    "cf_pool_flatten_dense": lambda: seq((3, 4, 6), L.MaxPooling2D(2, data_format=CF), L.Flatten(data_format=CF),
                                         L.Dense(3)),
    "cf_zeropad_crop_upsample": lambda: seq((3, 4, 5), L.ZeroPadding2D(1, data_format=CF),
                                            L.Cropping2D(((0, 1), (2, 0)), data_format=CF),
                                            L.UpSampling2D(2, data_format=CF)),
    # -- merges, with mixed IR layouts
    "add": lambda: merged(L.Add),
    "subtract": lambda: merged(L.Subtract),
    "multiply": lambda: merged(L.Multiply),
    "average": lambda: merged(L.Average),
    "maximum": lambda: merged(L.Maximum),
    "minimum": lambda: merged(L.Minimum),
    "concat_channels": lambda: merged(L.Concatenate),
    "concat_axis1": lambda: merged(lambda: L.Concatenate(axis=1)),
    "dot_rank3": lambda: _dot3(),
    # -- embeddings
    "embedding": lambda: seq((5,), L.Embedding(12, 4), dtype="int32"),
    "embedding_flatten": lambda: seq((5,), L.Embedding(12, 4), L.Flatten(), L.Dense(2), dtype="int64"),
}


def _dot3():
    keras.utils.set_random_seed(1)
    a = keras.Input((4, 6), name="a")
    b = keras.Input((5, 6), name="b")
    return keras.Model([a, b], [L.Dot(axes=(2, 2))([a, b]), L.Dot(axes=(2, 2), normalize=True)([a, b])])


ACTIVATIONS = ["relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "softmax", "swish", "silu", "gelu",
               "elu", "selu", "softplus", "softsign", "hard_swish", "hard_silu", "leaky_relu", "linear",
               "exponential", "mish", "log_softmax"]


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_parity(case: str, nchw: bool) -> None:
    import portanet

    model = CASES[case]()
    ir_model = portanet.convert(model, nchw=nchw)
    assert_parity(ir_model, model, random_inputs(model, seed=zlib.crc32(case.encode()) % 1000), nchw)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_parity(name: str) -> None:
    import portanet

    # inputs spread over [-6, 6] so every piece of piecewise activations is exercised
    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 16), name="x")
    # the Activation layer, and the same activation fused into a Dense
    model = keras.Model(inp, [L.Activation(name)(inp), L.Dense(3, activation=name)(inp)])
    x = np.linspace(-6, 6, 2 * 4 * 16, dtype=np.float32).reshape(2, 4, 16)
    assert_parity(portanet.convert(model), model, [x], nchw=False)


def test_gelu_approximate_parity() -> None:
    import functools

    import portanet

    model = seq((16,), L.Activation(functools.partial(keras.activations.gelu, approximate=True)))
    x = np.linspace(-5, 5, 32, dtype=np.float32).reshape(2, 16)
    assert_parity(portanet.convert(model), model, [x], nchw=False)


def test_flatten_dense_keeps_keras_order_exactly() -> None:
    """Flatten -> Dense after a channels-first IR value: the Dense weights see the NHWC order."""
    import portanet
    from tests.converters.keras.conftest import keras_outputs, run_converted

    model = conv_then(L.Flatten(), L.Dense(6))
    xs = random_inputs(model)
    got = run_converted(portanet.convert(model), xs, nchw=False)[0]
    # an independent numpy Dense on Keras' own flattened conv output
    conv_out = keras.Model(model.inputs[0], model.layers[1].output)(xs[0])
    dense = model.layers[-1]
    flat = np.asarray(conv_out).reshape(2, -1)  # NHWC order
    ref = flat @ np.asarray(dense.kernel) + np.asarray(dense.bias)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, keras_outputs(model, xs)[0], rtol=1e-4, atol=1e-5)
