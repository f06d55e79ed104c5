"""The keras.applications catalogue: every constructor is listed here, with how it is proven.

Every family (ConvNeXt, DenseNet, EfficientNet, EfficientNetV2, Inception, Inception-ResNet,
MobileNet v1/v2/v3, NASNet, ResNet, ResNetV2, VGG, Xception) has members converted and checked
against Keras (weights=None, random BatchNorm statistics, the smallest input the family takes,
10 classes and no softmax so the logits are compared). Larger members of a family are the
same layer types at a greater depth/width; they are not run in the suite (time, and the
largest need more than 3 GB), see ``COVERED_BY``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, keras_outputs, random_inputs, to_nchw

keras = pytest.importorskip("keras")

#: converted and checked here: constructor -> (input size, interface layout, backends); one
#: layout per model (both layouts of every op are covered by the per-layer and per-op tests), the
#: torch backend on the faster models (its lowering is the slow part of the larger ones)
HERE = {
    "DenseNet121": (32, "nhwc", ("ort",)),
    "EfficientNetV2B0": (32, "nchw", ("ort", "torch")),
    "MobileNet": (32, "nchw", ("ort", "torch")),
    "NASNetMobile": (32, "nhwc", ("ort",)),
    "ResNet50V2": (32, "nchw", ("ort",)),
    "Xception": (71, "nhwc", ("ort", "torch")),
}
#: converted and checked by other tests of the suite (both layouts unless said)
ELSEWHERE = {
    "ResNet50": "test_keras_zoo.py", "MobileNetV2": "test_keras_zoo.py", "EfficientNetB0": "test_keras_zoo.py",
    "InceptionV3": "test_keras_zoo.py", "VGG16": "test_keras_zoo.py",
    "MobileNetV3Small": "test_keras_ops.py", "MobileNetV3Large": "test_keras_ops.py",
    "ConvNeXtTiny": "test_keras_trace.py (NHWC)", "InceptionResNetV2": "test_keras_trace.py (NCHW)",
}
#: larger members: the same layer types as the family member checked
COVERED_BY = {
    "ConvNeXtSmall": "ConvNeXtTiny", "ConvNeXtBase": "ConvNeXtTiny", "ConvNeXtLarge": "ConvNeXtTiny",
    "ConvNeXtXLarge": "ConvNeXtTiny",
    "DenseNet169": "DenseNet121", "DenseNet201": "DenseNet121",
    **{f"EfficientNetB{i}": "EfficientNetB0" for i in range(1, 8)},
    **{n: "EfficientNetV2B0" for n in ("EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
                                       "EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L")},
    "NASNetLarge": "NASNetMobile",
    "ResNet101": "ResNet50", "ResNet152": "ResNet50", "ResNet101V2": "ResNet50V2", "ResNet152V2": "ResNet50V2",
    "VGG19": "VGG16",
}


def test_every_constructor_is_accounted_for() -> None:
    constructors = {n for n in dir(keras.applications) if n[:1].isupper() and callable(getattr(keras.applications, n))}
    listed = set(HERE) | set(ELSEWHERE) | set(COVERED_BY)
    assert constructors == listed, (sorted(constructors - listed), sorted(listed - constructors))
    assert set(COVERED_BY.values()) <= set(HERE) | set(ELSEWHERE)


@pytest.mark.parametrize("name", sorted(HERE))
def test_application_parity(name: str) -> None:
    import portanet
    from tests.converters.keras.test_keras_layers import _bn_random

    size, interface, backends = HERE[name]
    nchw = interface == "nchw"
    keras.utils.set_random_seed(0)
    model = _bn_random(getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10,
                                                         classifier_activation=None))
    xs = random_inputs(model)
    (ref,) = keras_outputs(model, xs)
    ir_model = portanet.convert(model, nchw=nchw)
    for backend in backends:
        s = portanet.Session(ir_model, backend=backend)
        got = s.run({s.inputs[0].name: to_nchw(xs[0]) if nchw else xs[0]})[s.outputs[0].name]
        # the project's parity tolerance: |got - ref| <= 1e-5 + 1e-4 * max|ref| (over the logits)
        bound = ATOL + RTOL * float(np.max(np.abs(ref)))
        assert got.shape == ref.shape
        assert float(np.max(np.abs(got - ref))) <= bound, (backend, float(np.max(np.abs(got - ref))), bound)
