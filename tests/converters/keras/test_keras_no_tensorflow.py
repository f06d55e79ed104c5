"""`portanet convert model.keras` reads the file without importing TensorFlow even when the file
needs Keras (here a keras.ops reduction the config reader leaves to Keras: Keras then runs on its
torch backend in that process; deserializing and tracing need no computation). The converted
model is checked against Keras on TensorFlow in this process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.converters.keras.conftest import assert_parity, random_inputs

keras = pytest.importorskip("keras")
pytest.importorskip("torch")

# converts each (source, output) pair given on its command line, in one process
RUNNER = textwrap.dedent('''
    import sys
    from portanet.cli import main
    pairs = sys.argv[1:]
    for src, out in zip(pairs[::2], pairs[1::2]):
        sys.argv = ["portanet", "convert", src, "-o", out]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        print("EXIT", code)
    print("TENSORFLOW", "tensorflow" in sys.modules)
''')


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
    import os

    import portanet

    models = {suffix: _model(raw_ops=suffix == ".keras") for suffix in (".keras", ".h5")}
    args = []
    for suffix, model in models.items():
        model.save(tmp_path / f"m{suffix}")
        args += [str(tmp_path / f"m{suffix}"), str(tmp_path / f"m{suffix}.onnx")]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    res = subprocess.run([sys.executable, "-c", RUNNER, *args], capture_output=True, text=True, timeout=600, env=env)
    assert res.stdout.count("EXIT 0") == 2, res.stdout + res.stderr
    assert "TENSORFLOW False" in res.stdout, res.stdout
    for suffix, model in models.items():
        out = tmp_path / f"m{suffix}.onnx"
        assert_parity(portanet.load(out), model, random_inputs(model), nchw=False)
