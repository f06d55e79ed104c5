"""``portanet quantize`` on the case-study CNN trained natively in PyTorch.

References: the float accuracy comes from PyTorch eager (the source framework); the int8
accuracy of every written file is recomputed here with plain onnxruntime and the labels,
independently of portanet's evaluation.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from model_zoo.case_study_nets import MEAN, STD
from portanet.cli import cli
from tests.quantize.helpers import ort_accuracy

pytest.importorskip("torch")

NORM = ["--mean", str(MEAN), "--std", str(STD)]


def invoke(*args):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def ops(path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def test_case_study_cnn_int8_keeps_accuracy_within_half_a_point(trained_cnn, tmp_path):
    out, js = tmp_path / "q.onnx", tmp_path / "q.json"
    r = invoke("quantize", trained_cnn.onnx, "-o", out, *NORM, "--json", js)
    assert r.exit_code == 0, r.output
    d = trained_cnn.digits
    int8 = ort_accuracy(out, d.x_test, d.y_test)
    assert abs(100 * (trained_cnn.torch_accuracy - int8)) <= 0.5
    report = json.loads(js.read_text())
    f, q = report["rows"]
    assert f["accuracy"] == pytest.approx(trained_cnn.torch_accuracy, abs=1e-3)  # ORT float vs PyTorch eager
    assert q["accuracy"] == pytest.approx(int8, abs=1e-12)
    assert q["size_bytes"] < 0.35 * f["size_bytes"]  # int8 weights: a quarter, plus scales and zero points
    assert set(f["latency_ms"]) == set(q["latency_ms"]) == {"1", "32"}
    # static QDQ form: weights stored as int8, activations quantized at every weight layer
    found = ops(out)
    assert found.get("QuantizeLinear", 0) >= 5 and found.get("DequantizeLinear", 0) >= 10
    model = onnx.load(str(out))
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2]
    assert len(int8_weights) == 5  # 3 convolutions and 2 dense layers
    # the output Softmax stays float (ONNX Runtime would quantize probabilities in steps of 1/256)
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[model.graph.output[0].name].op_type == "Softmax"
    assert "int8" in r.output and "float32" in r.output and "ORT b32 ms" in r.output


@pytest.mark.parametrize("calibration,per_channel", [("entropy", True), ("percentile", True), ("minmax", False)])
def test_calibrations_and_per_tensor(trained_cnn, calibration, per_channel):
    from portanet.ir.io import load_onnx
    from portanet.quantize import QuantizeOptions, quantize

    opts = QuantizeOptions(calibration=calibration, per_channel=per_channel, mean=[MEAN], std=[STD],
                           latency_batches=())
    result = quantize(load_onnx(trained_cnn.onnx), None, opts)
    f, q = result.report.rows
    assert abs(100 * (f.accuracy - q.accuracy)) <= 0.5
    assert q.cosine > 0.999
    scales = [v.const_value.numpy() for v in result.model.graph.initializers.values()
              if v.name.endswith("_scale") and v.const_value is not None]
    assert any(s.size > 1 for s in scales) == per_channel  # per-channel scales are vectors


def test_dynamic_quantizes_dense_weights_only(trained_cnn, tmp_path):
    out = tmp_path / "dyn.onnx"
    r = invoke("quantize", trained_cnn.onnx, "-o", out, "--mode", "dynamic", *NORM, "--no-latency")
    assert r.exit_code == 0, r.output
    found = ops(out)
    assert found.get("DynamicQuantizeLinear", 0) >= 1 and found.get("Conv", 0) == 3
    d = trained_cnn.digits
    assert abs(100 * (trained_cnn.torch_accuracy - ort_accuracy(out, d.x_test, d.y_test))) <= 0.5


def test_calibration_inputs_are_prepared_like_portanet_train(trained_cnn):
    """Same layout and normalisation as the Trainer on the same data (its defaults and given mean/std)."""
    from portanet.ir.io import load_onnx
    from portanet.quantize.data import prepare_data
    from portanet.runtime.trainer import TrainConfig, Trainer

    for kw in ({}, {"mean": [MEAN], "std": [STD]}):
        model = load_onnx(trained_cnn.onnx)
        prepared = prepare_data(model, None, samples=8, **kw)
        trainer = Trainer(load_onnx(trained_cnn.onnx), TrainConfig(epochs=0, **kw)).prepare(None)
        assert prepared.layout == trainer._prep.layout
        assert prepared.normalizer.to_dict() == trainer._prep.normalizer.to_dict()
        np.testing.assert_array_equal(prepared.test_x, trainer._prep.x_test.numpy())


def test_normalisation_recorded_by_portanet_train_is_reused(trained_cnn):
    from portanet.ir.io import load_onnx
    from portanet.ir.metadata import set_json
    from portanet.quantize.data import TRAINING_KEY, prepare_data

    model = load_onnx(trained_cnn.onnx)
    set_json(model, TRAINING_KEY, {"normalization": {"mean": [0.5], "std": [0.25], "scale": 1 / 255,
                                                     "channel_axis": 1}})
    prepared = prepare_data(model, None, samples=4)
    assert "training record" in prepared.normalization_source
    x = prepared.test_x
    raw = trained_cnn.digits.raw.test.x[:len(x), None].astype(np.float32) / 255
    np.testing.assert_allclose(x, (raw - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_unlabelled_data_reports_agreement_and_cosine(trained_cnn, tmp_path):
    d = trained_cnn.digits.raw
    data = tmp_path / "unlabelled.npz"
    # float targets: regression-style data, no class labels
    np.savez(data, x=d.train.x[:600], y=np.zeros(600, np.float32), x_test=d.test.x[:300],
             y_test=np.zeros(300, np.float32))
    out, js = tmp_path / "q.onnx", tmp_path / "q.json"
    r = invoke("quantize", trained_cnn.onnx, "-o", out, "--data", data, *NORM, "--no-latency", "--json", js)
    assert r.exit_code == 0, r.output
    q = json.loads(js.read_text())["rows"][1]
    assert q["accuracy"] is None and q["agreement"] > 0.98 and q["cosine"] > 0.999
    assert json.loads(js.read_text())["drop_kind"] == "agreement"


def test_calibration_in_strides_gives_the_ranges_of_one_pass(trained_cnn, monkeypatch):
    """Calibration runs in passes of CALIBRATION_STRIDE samples (memory); min/max ranges merged over
    passes equal those of one pass over all samples."""
    from portanet.ir.io import load_onnx
    from portanet.quantize import QuantizeOptions, engine, quantize

    def scales(stride: int) -> dict[str, np.ndarray]:
        monkeypatch.setattr(engine, "CALIBRATION_STRIDE", stride)
        opts = QuantizeOptions(samples=64, mean=[MEAN], std=[STD], latency_batches=(), test_samples=50)
        m = quantize(load_onnx(trained_cnn.onnx), None, opts).model
        return {k: v.const_value.numpy() for k, v in m.graph.initializers.items() if k.endswith("_scale")}

    one, strided = scales(64), scales(8)
    assert one.keys() == strided.keys() and len(one) > 5
    for k in one:
        np.testing.assert_allclose(strided[k], one[k], rtol=1e-6, err_msg=k)


def test_output_softmax_over_many_classes_stays_float(tmp_path):
    """1000 near-uniform probabilities (~0.001 each) survive int8: quantized in steps of 1/256 they
    would all be 0 and the arg-max meaningless. Reference: the float model on ONNX Runtime."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((0.05 * rng.standard_normal((1000, 64))).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["z"], transB=1, name="fc"),
                           helper.make_node("Softmax", ["z"], ["p"], name="prob")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1000])], [w])
    model = tmp_path / "wide.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(model))
    data = tmp_path / "d.npz"
    x = rng.standard_normal((400, 64)).astype(np.float32)
    np.savez(data, x=x[:300], y=np.zeros(300, np.float32), x_test=x[300:], y_test=np.zeros(100, np.float32))
    out, js = tmp_path / "q.onnx", tmp_path / "q.json"
    r = invoke("quantize", model, "-o", out, "--data", data, "--no-normalize", "--no-latency", "--json", js)
    assert r.exit_code == 0, r.output
    q = json.loads(js.read_text())["rows"][1]
    assert q["agreement"] >= 0.9 and q["cosine"] > 0.999
