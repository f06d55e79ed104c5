"""Builders of the Keras reference models.

* ``case_study_cnn``: the case-study Sequential CNN (MNIST, 28x28x1 -> 10 classes).
* ``two_input_shared``: a functional net with two image inputs, layers shared by both
  branches, and two outputs.
* keras.applications ResNet50, MobileNetV2, EfficientNetB0, InceptionV3, VGG16 with
  ``weights=None`` at small input sizes and random BatchNormalization statistics, so that
  inference exercises every BatchNorm parameter (fresh layers have mean 0 / variance 1).

Everything is seeded: the same call builds the same weights.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.common import cache_dir, cached

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _keras() -> Any:
    import keras

    return keras


def randomize_batchnorm(model: Any, seed: int = 0) -> Any:
    """Give every BatchNormalization layer (nested models included) random statistics and affine terms."""
    keras = _keras()
    rng = np.random.default_rng(seed)

    def layers(m: Any):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from layers(layer)
            else:
                yield layer

    for layer in layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0.0, 0.1, c).astype(np.float32))
    return model


def case_study_cnn(seed: int = 0) -> Any:
    """The case-study CNN (the project's one network in five frameworks) as a Keras Sequential:
    28x28x1 digits -> Conv-MaxPool-Conv-AvgPool-Dropout-Conv-Flatten-Dense-Dropout-Dense-Softmax."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            layers.Conv2D(16, 3, activation="relu", name="conv1"),  # -> (26, 26, 16)
            layers.MaxPooling2D(2, name="pool1"),  # -> (13, 13, 16)
            layers.Conv2D(32, 4, activation="relu", name="conv2"),  # -> (10, 10, 32)
            layers.AveragePooling2D(2, name="pool2"),  # -> (5, 5, 32)
            layers.Dropout(0.3, name="drop1"),
            layers.Conv2D(64, 5, activation="relu", name="conv3"),  # -> (1, 1, 64)
            layers.Flatten(name="flatten"),  # -> (64,)
            layers.Dense(32, activation="tanh", name="fc1"),
            layers.Dropout(0.2, name="drop2"),
            layers.Dense(10, name="fc2"),
            layers.Softmax(name="prob"),
        ],
        name="case_study_cnn",
    )
    return model


def two_input_shared(seed: int = 0) -> Any:
    """Two 16x16x3 inputs through one shared conv tower; concatenated head and a difference head."""
    keras = _keras()
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    a = keras.Input((16, 16, 3), name="left")
    b = keras.Input((16, 16, 3), name="right")
    conv = layers.Conv2D(8, 3, padding="same", name="shared_conv")
    bn = layers.BatchNormalization(name="shared_bn")
    act = layers.Activation("swish", name="shared_act")
    pool = layers.GlobalAveragePooling2D(name="shared_gap")
    fa = pool(act(bn(conv(a))))
    fb = pool(act(bn(conv(b))))
    joined = layers.Concatenate(name="joined")([fa, fb])
    head = layers.Dense(6, activation="tanh", name="head")(joined)
    diff = layers.Subtract(name="diff")([fa, fb])
    sim = layers.Dot(axes=1, normalize=True, name="similarity")([fa, fb])
    model = keras.Model([a, b], [head, diff, sim], name="two_input_shared")
    return randomize_batchnorm(model, seed)


def _application(name: str, shape: tuple[int, int, int]) -> Callable[[int], Any]:
    def build_app(seed: int = 0) -> Any:
        keras = _keras()
        keras.utils.set_random_seed(seed)
        ctor = getattr(keras.applications, name)
        model = ctor(weights=None, input_shape=shape)
        return randomize_batchnorm(model, seed)

    build_app.__name__ = name.lower()
    build_app.__doc__ = f"keras.applications.{name}(weights=None, input_shape={shape}) with random BN statistics."
    return build_app


#: application name -> (builder, input shape); the smallest sizes the architectures allow well
APPLICATIONS: dict[str, tuple[Callable[[int], Any], tuple[int, int, int]]] = {
    "resnet50": (_application("ResNet50", (64, 64, 3)), (64, 64, 3)),
    "mobilenetv2": (_application("MobileNetV2", (96, 96, 3)), (96, 96, 3)),
    "efficientnetb0": (_application("EfficientNetB0", (64, 64, 3)), (64, 64, 3)),
    "inceptionv3": (_application("InceptionV3", (75, 75, 3)), (75, 75, 3)),
    "vgg16": (_application("VGG16", (32, 32, 3)), (32, 32, 3)),
}

BUILDERS: dict[str, Callable[[int], Any]] = {
    "case_study_cnn": case_study_cnn,
    "two_input_shared": two_input_shared,
    **{k: v[0] for k, v in APPLICATIONS.items()},
}


def build(name: str, seed: int = 0) -> Any:
    """Build the zoo model ``name`` (a ``keras.Model``)."""
    return BUILDERS[name](seed)


def save_model(name: str, suffix: str = ".keras", seed: int = 0) -> Path:
    """Build ``name`` and save it as ``<cache>/keras/<name>-s<seed>-<tag><suffix>`` (reused if present;
    ``tag`` hashes this file, so editing a builder never reuses a stale model)."""
    tag = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    return cached(cache_dir("keras") / f"{name}-s{seed}-{tag}{suffix}", lambda tmp: build(name, seed).save(tmp))
