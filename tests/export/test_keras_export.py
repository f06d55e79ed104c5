"""The Keras export: standard layers only, channels-last interface, exact Caffe pooling,
trainable with model.fit, and the SavedModel/TFLite exports built from it.

References: ONNX Runtime on the IR (every export, through ``portanet.export``'s fresh-process
check) and, for the Caffe pooling net, OpenCV's DNN module running the Caffe files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import portanet
from portanet.export.graph import ExportGraph
from tests.export.conftest import case_study_caffe_files, zoo_ir

keras = pytest.importorskip("keras", reason="keras (portanet[tf]) is not installed")

#: Caffe pooling whose windows run past the input (ceil rounding) and padded pooling:
#: MAX must ignore the padding (all inputs are negative here), AVE divides by the clipped window
POOL_NET = """\
name: "PoolNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } } }
layer { name: "pool_max" type: "Pooling" bottom: "data" top: "pool_max"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_ave" type: "Pooling" bottom: "pool_max" top: "pool_ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv" type: "Convolution" bottom: "pool_ave" top: "conv"
        convolution_param { num_output: 3 kernel_size: 2 } }
"""


@pytest.fixture(scope="module")
def pool_net(tmp_path_factory) -> tuple[Path, Path]:
    from model_zoo.caffe.writer import write_caffemodel

    folder = tmp_path_factory.mktemp("poolnet")
    prototxt = folder / "pool.prototxt"
    prototxt.write_text(POOL_NET)
    caffemodel = folder / "pool.caffemodel"
    write_caffemodel(POOL_NET, caffemodel, seed=3)
    return prototxt, caffemodel


def test_caffe_ceil_and_padded_pooling_is_exact(pool_net, tmp_path: Path) -> None:
    prototxt, caffemodel = pool_net
    out = tmp_path / "pool.keras"
    result = portanet.export([str(prototxt), str(caffemodel)], to="keras", path=out)
    assert result.check.passed  # vs ONNX Runtime, fresh process, batch 1 and 3
    model = keras.saving.load_model(out)
    x = -np.abs(np.random.default_rng(1).standard_normal((2, 2, 9, 9))).astype(np.float32) - 1.0
    got = np.asarray(model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (portanet[caffe-ref]) is not installed")
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x)
    want = net.forward()  # OpenCV implements Caffe's ceil rounding and its clipped divisor
    assert got.shape == want.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 + 1e-4 * np.abs(want).max())


def test_standard_layers_channels_last_and_keep_layout(tmp_path: Path) -> None:
    files = list(map(str, case_study_caffe_files()))
    out = tmp_path / "cs.keras"
    portanet.export(files, to="keras", path=out, verify=False)  # its parity: test_zoo_parity
    model = keras.saving.load_model(out)
    assert tuple(model.inputs[0].shape) == (None, 28, 28, 1)  # like a native Keras model
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "MaxPooling2D", "AveragePooling2D", "Dense", "Dropout", "Softmax"} <= kinds
    assert all(type(layer).__module__.startswith("keras.") for layer in model.layers)
    nchw = tmp_path / "cs_nchw.keras"
    result = portanet.export(files, to="keras", path=nchw, keep_layout=True)
    assert result.check.passed
    assert tuple(keras.saving.load_model(nchw).inputs[0].shape) == (None, 1, 28, 28)


def test_fit_trains_the_export(tmp_path: Path) -> None:
    out = tmp_path / "unet.keras"
    portanet.export(zoo_ir("pytorch-small_unet"), to="keras", path=out, verify=False)
    model = keras.saving.load_model(out)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32, 32, 3)).astype(np.float32)
    y = rng.standard_normal((4, 32, 32, 2)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    hist = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    after = model.get_weights()
    changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
    assert changed > len(before) // 2  # kernels, biases, BN scales and moving statistics moved


def test_tflite_dynamic_quantization(tmp_path: Path) -> None:
    """int8 weights: a quarter of the float32 bytes, outputs within 0.1 * max|ref| of ONNX
    Runtime (the float32 TFLite export's parity is in test_zoo_parity)."""
    files = list(map(str, case_study_caffe_files()))
    q = portanet.export(files, to="tflite", path=tmp_path / "cs_q.tflite", quantize="dynamic")
    assert q.check.passed
    g = ExportGraph(portanet.optimize(portanet.convert(*files), level=1))
    float_bytes = 4 * sum(v.const_value.size for v in g.graph.initializers.values())
    assert (tmp_path / "cs_q.tflite").stat().st_size < 0.5 * float_bytes


def test_parity_failure_names_the_keras_layer(monkeypatch, tmp_path: Path) -> None:
    """A deliberately wrong handler (softmax written as sigmoid) is caught in the fresh process
    and located by tapping the Keras layers' outputs."""
    from portanet.errors import ParityError
    from portanet.export.keras_build import builder
    from portanet.export.keras_build.ops import activation  # noqa: F401 - registers the handlers

    def wrong(b, node):
        x = b.get(node.inputs[0], None)
        return b.apply(b.layers.Activation("sigmoid", name=b.name()), x, None, None)

    monkeypatch.setitem(builder._HANDLERS, "Softmax", wrong)
    with pytest.raises(ParityError, match=r"first divergent layer 'prob' \(Softmax\)"):
        portanet.export(list(map(str, case_study_caffe_files())), to="keras", path=tmp_path / "bad.keras")
