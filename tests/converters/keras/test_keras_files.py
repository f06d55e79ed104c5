"""Files and the CLI: `portanet convert model.keras|model.h5|saved_model_dir -o m.onnx`, format
detection, and bad inputs (one-line errors, exit status 2, no output file written)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tests.converters.keras.conftest import ATOL, RTOL, keras_outputs, random_inputs, to_nchw

keras = pytest.importorskip("keras")


def _cli(*args: str):
    from portanet.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_cli_convert_keras_file(keras_zoo, tmp_path, nchw: bool) -> None:
    import onnx

    from model_zoo.keras.models import save_model
    from portanet.runtime.session import Session

    src = save_model("two_input_shared", ".keras")
    out = tmp_path / "m.onnx"
    res = _cli("convert", str(src), "-o", str(out), *(["--nchw"] if nchw else []))
    assert res.exit_code == 0, res.output
    onnx.checker.check_model(str(out))
    model = keras_zoo("two_input_shared")
    xs = random_inputs(model)
    s = Session(str(out))
    got = s.run({"left": to_nchw(xs[0]) if nchw else xs[0], "right": to_nchw(xs[1]) if nchw else xs[1]})
    for name, ref in zip(["head", "diff", "similarity"], keras_outputs(model, xs)):
        np.testing.assert_allclose(got[name], ref, rtol=RTOL, atol=ATOL)


def test_cli_convert_saved_model_dir(keras_zoo, tmp_path) -> None:
    from portanet.runtime.session import Session

    sm = tmp_path / "sm"
    model = keras_zoo("case_study_cnn")
    model.export(str(sm), verbose=False)
    out = tmp_path / "sm.onnx"
    res = _cli("convert", str(sm), "-o", str(out))
    assert res.exit_code == 0, res.output
    x = random_inputs(model, batch=2)[0]
    got = Session(str(out)).run({"image": x})["output_0"]
    np.testing.assert_allclose(got, keras_outputs(model, [x])[0], rtol=RTOL, atol=ATOL)


def test_provenance_and_names(keras_zoo) -> None:
    import portanet
    from portanet.ir.provenance import nodes_by_source

    model = keras_zoo("case_study_cnn")
    ir_model = portanet.convert(model)
    by_src = nodes_by_source(ir_model.graph)
    types = {n.metadata_props["portanet.source_type"] for nodes in by_src.values() for n in nodes}
    assert {"conv1", "pool1", "conv2", "pool2", "conv3", "flatten", "fc1", "fc2", "prob"} <= set(by_src)
    assert {"Conv2D", "MaxPooling2D", "AveragePooling2D", "Flatten", "Dense", "Softmax"} <= types
    assert all("portanet.source" in n.metadata_props for n in ir_model.graph)
    # one Transpose at the image boundary (NHWC -> NCHW); none before the Flatten of (N, 64, 1, 1)
    assert sum(n.op_type == "Transpose" for n in ir_model.graph) == 1
    assert [v.name for v in ir_model.graph.inputs] == ["image"]
    assert [v.name for v in ir_model.graph.outputs] == ["prob"]
    # --nchw: no Transpose at all
    assert not any(n.op_type == "Transpose" for n in portanet.convert(model, nchw=True).graph)


def _lambda_model():
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((4,), name="x")
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    x = keras.layers.Dense(3, name="fc")(x)
    x = keras.layers.Lambda(lambda t: t + 1.0, name="shift")(x)
    return keras.Model(inp, x)


def test_lambda_layers_need_trust_code_then_convert_by_tracing(tmp_path) -> None:
    import portanet
    from tests.converters.keras.conftest import assert_parity, random_inputs

    model = _lambda_model()
    # in memory the code is already loaded: the lambdas are traced into keras.ops nodes
    assert_parity(portanet.convert(model), model, random_inputs(model), nchw=False)
    path = tmp_path / "lam.keras"
    model.save(path)
    out = tmp_path / "lam.onnx"
    res = _cli("convert", str(path), "-o", str(out))
    assert res.exit_code == 2
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "lam.keras" in lines[0] and "double, shift" in lines[0], lines
    assert "--trust-code" in lines[0]
    assert not out.exists()
    res = _cli("convert", str(path), "-o", str(out), "--trust-code")
    assert res.exit_code == 0, res.output
    assert_parity(portanet.load(out), model, random_inputs(model), nchw=False)


def _assert_bad(path, out, *expected: str) -> None:
    res = _cli("convert", str(path), "-o", str(out))
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "Traceback" not in res.output
    for e in (str(path), *expected):
        assert e in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(".portanet-*"))


def test_keras_file_that_is_not_a_zip(tmp_path) -> None:
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"this is not a zip archive at all")
    _assert_bad(bad, tmp_path / "m.onnx", "expected a zip file", "b'this'")


def test_keras_zip_without_config(tmp_path) -> None:
    import zipfile

    bad = tmp_path / "model.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("other.txt", "x")
    _assert_bad(bad, tmp_path / "m.onnx", "no config.json")


def test_truncated_h5(tmp_path) -> None:
    from model_zoo.keras.models import save_model

    good = save_model("case_study_cnn", ".h5").read_bytes()
    bad = tmp_path / "model.h5"
    bad.write_bytes(good[: len(good) // 3])
    _assert_bad(bad, tmp_path / "m.onnx", "cannot")


def test_h5_that_is_not_hdf5(tmp_path) -> None:
    bad = tmp_path / "model.h5"
    bad.write_bytes(b"\x00" * 64)
    _assert_bad(bad, tmp_path / "m.onnx", "not an HDF5 file")


def test_weights_only_h5(keras_zoo, tmp_path) -> None:
    path = tmp_path / "w.weights.h5"
    keras_zoo("case_study_cnn").save_weights(path)
    _assert_bad(path, tmp_path / "m.onnx", "weights only")


def test_empty_file(tmp_path) -> None:
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"")
    _assert_bad(bad, tmp_path / "m.onnx", "empty file")


def test_folder_that_is_not_a_saved_model(tmp_path) -> None:
    from portanet.converters.keras.importer import KerasImporter
    from portanet.converters.registry import ConvertOptions
    from portanet.errors import InvalidModelError

    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidModelError, match="not a TensorFlow SavedModel"):
        KerasImporter().convert([tmp_path / "d"], ConvertOptions())


def test_detection(tmp_path) -> None:
    from model_zoo.keras.models import save_model
    from portanet.converters.registry import detect

    keras_file = save_model("case_study_cnn", ".keras")
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(keras_file.read_bytes())
    assert detect([keras_file]).name == "keras"
    assert detect([renamed]).name == "keras"  # by content: a zip with config.json + weights
    assert detect([save_model("case_study_cnn", ".h5")]).name == "keras"


class SubclassedNet(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, padding="same")
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, x):
        return self.conv(x), self.pool(self.conv(x))


def test_unbuilt_subclassed_model_needs_an_input_shape() -> None:
    import portanet
    from portanet.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="subclassed.*no known input shape.*--input-shape"):
        portanet.convert(SubclassedNet())


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_subclassed_model_traced_layer_by_layer(nchw: bool) -> None:
    import portanet
    from portanet.parity.runners.keras import run_reference
    from portanet.runtime.session import Session

    keras.utils.set_random_seed(0)
    m = SubclassedNet()
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    ir_model = portanet.convert(m, example_inputs=[x], nchw=nchw)
    # traced through keras.ops: the sub-layers' own handlers, with their Keras names as provenance
    assert {n.metadata_props["portanet.source_type"] for n in ir_model.graph} <= {"Conv2D", "GlobalAveragePooling2D"}
    s = Session(ir_model)
    feed = to_nchw(x) if nchw else x
    got = s.run({s.inputs[0].name: feed})
    ref = [np.asarray(t) for t in m(x, training=False)]
    assert [o.name for o in s.outputs] == ["output_0", "output_1"]
    np.testing.assert_allclose(got["output_0"], to_nchw(ref[0]) if nchw else ref[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["output_1"], ref[1], rtol=RTOL, atol=ATOL)
    # the runner runs the subclassed model itself
    runner = run_reference(m, {s.inputs[0].name: feed}, options={"nchw": nchw})
    np.testing.assert_allclose(runner["output_1"], ref[1], rtol=RTOL, atol=ATOL)


def test_input_shape_override(keras_zoo) -> None:
    import portanet
    from portanet.runtime.session import Session

    model = keras_zoo("case_study_cnn")
    ir_model = portanet.convert(model, input_shapes={"": [4, 1, 28, 28]}, nchw=True)
    assert Session(ir_model).inputs[0].shape == (4, 1, 28, 28)
