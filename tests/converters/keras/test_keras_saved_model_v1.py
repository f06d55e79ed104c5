"""SavedModels written through TensorFlow's v1 API, converted through the v1 loader (the
fallback for SavedModels TensorFlow 2's object loader refuses). Reference: the same
SavedModel run in a ``tf.compat.v1.Session``."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, to_nchw

tf = pytest.importorskip("tensorflow")
v1 = tf.compat.v1


@pytest.fixture(scope="module")
def v1_saved_model(tmp_path_factory):
    """x (N, 6, 6, 3) -> conv 3x3 (variables) -> relu -> y; plus a pooled second output."""
    path = tmp_path_factory.mktemp("v1sm") / "model"
    rng = np.random.default_rng(0)
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, [None, 6, 6, 3], name="x")
        k = v1.get_variable("kernel", initializer=rng.standard_normal((3, 3, 3, 4)).astype(np.float32))
        b = v1.get_variable("bias", initializer=rng.standard_normal(4).astype(np.float32))
        y = tf.nn.relu(tf.nn.conv2d(x, k, strides=1, padding="SAME") + b, name="y")
        pooled = tf.reduce_mean(y, axis=[1, 2], name="pooled")
        sess.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(path))
        sig = v1.saved_model.predict_signature_def(inputs={"image": x}, outputs={"features": y, "pooled": pooled})
        builder.add_meta_graph_and_variables(sess, [v1.saved_model.tag_constants.SERVING],
                                             signature_def_map={"serving_default": sig})
        builder.save()
    xs = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    with tf.Graph().as_default(), v1.Session() as sess:
        v1.saved_model.loader.load(sess, [v1.saved_model.tag_constants.SERVING], str(path))
        ref = sess.run(["y:0", "pooled:0"], {"x:0": xs})
    return path, xs, {"features": ref[0], "pooled": ref[1]}


def test_v1_loader_nchw(v1_saved_model) -> None:
    """The v1 path with --nchw (the fallback test below covers the default NHWC interface)."""
    import portanet
    from portanet.converters.keras.tf_graph import convert_saved_model_v1
    from portanet.converters.registry import ConvertOptions

    path, xs, ref = v1_saved_model
    nchw = True
    model = convert_saved_model_v1(path, ConvertOptions(nchw=nchw))
    assert [v.name for v in model.graph.inputs] == ["image"]
    assert sorted(v.name for v in model.graph.outputs) == ["features", "pooled"]
    out = portanet.Session(model).run({"image": to_nchw(xs) if nchw else xs})
    np.testing.assert_allclose(out["features"], to_nchw(ref["features"]) if nchw else ref["features"],
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["pooled"], ref["pooled"], rtol=RTOL, atol=ATOL)
    # the frozen variables are initializers of the graph
    shapes = {tuple(v.const_value.shape) for v in model.graph.initializers.values() if v.const_value is not None}
    assert shapes & {(4, 3, 3, 3), (3, 3, 3, 4)}, shapes


def test_fallback_when_tf2_loader_fails(v1_saved_model, monkeypatch) -> None:
    """TensorFlow 2's loader fails on some SavedModels written by older TensorFlow (the message
    below, seen in the wild; it cannot be produced with the TensorFlow installed here, so the
    failure is injected): the conversion falls back to the v1 loader."""
    import portanet

    path, xs, ref = v1_saved_model

    def refuse(*args, **kwargs):
        raise AttributeError("'_UserObject' object has no attribute 'add_slot'")

    monkeypatch.setattr(tf.saved_model, "load", refuse)
    model = portanet.convert(str(path))
    out = portanet.Session(model).run({"image": xs})
    np.testing.assert_allclose(out["pooled"], ref["pooled"], rtol=RTOL, atol=ATOL)


def test_unloadable_saved_model_is_one_line(tmp_path) -> None:
    from click.testing import CliRunner

    from portanet.cli import cli

    bad = tmp_path / "sm"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["convert", str(bad), "-o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "cannot load the SavedModel" in lines[0], lines
    assert not out.exists()
