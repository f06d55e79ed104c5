"""The Keras reference runner: outputs and intermediate layer outputs in the IR's layout,
checked against Keras directly and against the converted model's own intermediate values."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from tests.converters.keras.conftest import ATOL, RTOL, keras_outputs, random_inputs, run_converted, to_nchw

keras = pytest.importorskip("keras")
L = keras.layers


def _ir_values(ir_model, names, xs, nchw):
    """The converted model's value for each source layer (last node carrying its provenance)."""
    from portanet.ir.provenance import last_value_of_layer

    probe = ir.Model(ir_model.graph, ir_version=ir_model.ir_version)
    for name in names:
        value = last_value_of_layer(probe.graph, name)
        if value not in probe.graph.outputs:
            probe.graph.outputs.append(value)
    got = run_converted(probe, xs, nchw)
    by_value = dict(zip([v.name for v in probe.graph.outputs], got))
    out = {}
    for name in names:
        out[name] = by_value[last_value_of_layer(probe.graph, name).name]
    return out


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_runner_outputs_and_layers_match_ir(keras_zoo, nchw: bool) -> None:
    import portanet
    from model_zoo.keras.models import save_model
    from portanet.parity.runners.keras import run_reference

    model = keras_zoo("case_study_cnn")
    ir_model = portanet.convert(model, nchw=nchw)
    x = random_inputs(model)[0]
    feeds = {"image": to_nchw(x) if nchw else x}
    layers = ["conv1", "pool2", "flatten", "fc1"]
    for source in (model, save_model("case_study_cnn", ".keras")):
        ref = run_reference([source], feeds, layers=layers, options={"nchw": nchw, "model": ir_model})
        want = keras_outputs(model, [x])[0]
        np.testing.assert_allclose(ref["prob"], want, rtol=RTOL, atol=ATOL)
        mine = _ir_values(ir_model, layers, [x], nchw)
        for name in layers:
            assert ref[name].shape == mine[name].shape, name
            np.testing.assert_allclose(mine[name], ref[name], rtol=RTOL, atol=ATOL)
    # conv1 is held channels-first inside the IR
    assert ref["conv1"].shape == (2, 16, 26, 26)


def _nested_model():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, padding="same", name="inner_conv"),
                              L.ReLU(name="inner_relu")], name="tower")
    a = keras.Input((8, 8, 3), name="a")
    b = keras.Input((8, 8, 3), name="b")
    shared = L.Conv2D(3, 1, name="shared_pre")
    ya = inner(shared(a))
    yb = inner(shared(b))
    out = L.GlobalMaxPooling2D(name="gmp")(L.Add(name="sum")([ya, yb]))
    return keras.Model([a, b], [out, ya], name="nested")


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_nested_and_shared_layers(nchw: bool) -> None:
    import portanet
    from portanet.parity.runners.keras import run_reference
    from tests.converters.keras.conftest import assert_parity

    model = _nested_model()
    ir_model = portanet.convert(model, nchw=nchw)
    xs = random_inputs(model)
    assert_parity(ir_model, model, xs, nchw)
    # a layer inside the nested model / a shared layer: its last call in graph order, as the IR's
    # last node of that name
    feeds = {"a": to_nchw(xs[0]) if nchw else xs[0], "b": to_nchw(xs[1]) if nchw else xs[1]}
    ref = run_reference(model, feeds, layers=["inner_conv", "shared_pre"], options={"nchw": nchw, "model": ir_model})
    mine = _ir_values(ir_model, ["inner_conv", "shared_pre"], xs, nchw)
    for name in ("inner_conv", "shared_pre"):
        np.testing.assert_allclose(mine[name], ref[name], rtol=RTOL, atol=ATOL)
    # independent check: the value is Keras' own layers applied to one of the two inputs
    calls = [np.asarray(model.get_layer("tower").get_layer("inner_conv")(model.get_layer("shared_pre")(x)))
             for x in xs]
    assert any(np.allclose(ref["inner_conv"], to_nchw(c), rtol=RTOL, atol=ATOL) for c in calls)


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
def test_verify_and_bisect_use_the_runner(keras_zoo, nchw: bool) -> None:
    """portanet.verify runs this runner: every layer of the shared two-input net is compared."""
    import portanet

    report = portanet.verify(keras_zoo("two_input_shared"), bisect=True, nchw=nchw, backends=["ort"])
    assert report.passed
    assert report.bisect.layer is None
    assert report.bisect.compared == report.bisect.candidates > 0


def test_prepare_loads_sources_once(keras_zoo, tmp_path) -> None:
    from model_zoo.keras.models import save_model
    from portanet.parity.runners.keras import SavedModelSignature, prepare, run_reference

    model = keras_zoo("case_study_cnn")
    sm = tmp_path / "sm"
    model.export(str(sm), verbose=False)
    loaded = prepare([save_model("case_study_cnn", ".keras")])
    assert isinstance(loaded[0], keras.Model)
    sig = prepare([sm])[0]
    assert isinstance(sig, SavedModelSignature)
    x = random_inputs(model)[0]
    want = keras_outputs(model, [x])[0]
    np.testing.assert_allclose(run_reference(loaded, {"image": x})["prob"], want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(run_reference([sig], {"image": x})["output_0"], want, rtol=RTOL, atol=ATOL)
