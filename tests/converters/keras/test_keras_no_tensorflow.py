"""`portanet convert model.keras` reads the file without importing TensorFlow even when the file
needs Keras (here a keras.ops reduction the config reader leaves to Keras: Keras then runs on its
torch backend in that process; deserializing and tracing need no computation). The converted
model is checked against Keras on TensorFlow in this process."""

from __future__ import annotations

import pytest

from tests.converters.keras.conftest import assert_parity, convert_in_fresh_process, random_inputs

keras = pytest.importorskip("keras")
pytest.importorskip("torch")



def _model(raw_ops: bool):
    """Layers, and raw keras.ops nodes (which the legacy .h5 format cannot store)."""
    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 3), name="x")
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv")(i)
    y = y * keras.ops.hard_sigmoid(y) + keras.ops.mean(y, axis=-1, keepdims=True) if raw_ops \
        else keras.layers.Activation("hard_swish")(y)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    return keras.Model(i, keras.layers.Dense(3, name="fc")(y))


def test_convert_does_not_import_tensorflow(tmp_path) -> None:

    import portanet

    models = {suffix: _model(raw_ops=suffix == ".keras") for suffix in (".keras", ".h5")}
    args = []
    for suffix, model in models.items():
        model.save(tmp_path / f"m{suffix}")
        args += [str(tmp_path / f"m{suffix}"), str(tmp_path / f"m{suffix}.onnx")]
    codes, imported, output = convert_in_fresh_process(list(zip(args[::2], args[1::2])))
    assert codes == [0, 0], output
    assert "tensorflow" not in imported, output
    for suffix, model in models.items():
        out = tmp_path / f"m{suffix}.onnx"
        assert_parity(portanet.load(out), model, random_inputs(model), nchw=False)
