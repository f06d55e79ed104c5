"""TensorFlow graphs that are not Keras models go through tf2onnx: a SavedModel folder
(exported from Keras) and in-memory ``tf.function``s, compared with TensorFlow itself."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, to_nchw

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="session")
def saved_model_dir(keras_zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("savedmodel") / "case_study_cnn"
    keras_zoo("case_study_cnn").export(str(path), verbose=False)
    return path


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_saved_model_through_tf2onnx(saved_model_dir, keras_zoo, nchw: bool) -> None:
    import portanet
    from portanet.converters.registry import detect
    from portanet.ir.metadata import FRAMEWORK_KEY
    from portanet.runtime.session import Session

    assert detect([saved_model_dir]).name == "keras"
    ir_model = portanet.convert(str(saved_model_dir), nchw=nchw)
    assert ir_model.metadata_props[FRAMEWORK_KEY] == "tensorflow"
    s = Session(ir_model)
    assert [i.name for i in s.inputs] == ["image"]
    assert s.inputs[0].shape == (("N", 1, 28, 28) if nchw else ("N", 28, 28, 1))
    x = np.random.default_rng(5).standard_normal((3, 28, 28, 1)).astype(np.float32)
    got = s.run({"image": to_nchw(x) if nchw else x})
    # TensorFlow's serving signature of the same folder is the reference
    serve = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    ref = {k: v.numpy() for k, v in serve(image=tf.constant(x)).items()}
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=RTOL, atol=ATOL)
    # and the Keras model it was exported from
    np.testing.assert_allclose(got["output_0"], np.asarray(keras_zoo("case_study_cnn")(x)), rtol=RTOL, atol=ATOL)


def _fn_with_signature():
    w = np.random.default_rng(2).standard_normal((3, 3, 2, 4)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 2), tf.float32, name="pixels")])
    def fn(x):
        y = tf.nn.conv2d(x, w, strides=2, padding="SAME")
        return tf.nn.relu6(y) * tf.reduce_mean(x)

    return fn


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_tf_function(nchw: bool) -> None:
    import portanet
    from portanet.runtime.session import Session

    fn = _fn_with_signature()
    ir_model = portanet.convert(fn, nchw=nchw)
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 2)).astype(np.float32)
    s = Session(ir_model)
    got = list(s.run({s.inputs[0].name: to_nchw(x) if nchw else x}).values())[0]
    ref = fn(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, to_nchw(ref) if nchw else ref, rtol=RTOL, atol=ATOL)


def test_tf_function_with_example_inputs() -> None:
    import portanet
    from portanet.runtime.session import Session

    @tf.function
    def fn(a, b):
        return tf.matmul(a, b) + 1.0

    a = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(np.float32)
    b = np.random.default_rng(4).standard_normal((2, 4, 5)).astype(np.float32)
    ir_model = portanet.convert(fn, example_inputs=(a, b))
    s = Session(ir_model)
    got = list(s.run(dict(zip([i.name for i in s.inputs], (a, b)))).values())[0]
    np.testing.assert_allclose(got, (tf.matmul(a, b) + 1.0).numpy(), rtol=RTOL, atol=ATOL)


def test_tf_function_without_signature_is_a_clear_error() -> None:
    import portanet
    from portanet.errors import ConversionError

    @tf.function
    def fn(a):
        return a * 2.0

    with pytest.raises(ConversionError, match="example_inputs"):
        portanet.convert(fn)
