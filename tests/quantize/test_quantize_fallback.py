"""Sensitivity-guided fallback on a network int8 genuinely breaks (``outlier_cnn``: one activation
channel 1000x larger than the others between the first two convolutions)."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from model_zoo.case_study_nets import MEAN, STD
from portanet.cli import cli
from tests.quantize.helpers import ort_accuracy

pytest.importorskip("torch")

NORM = ["--mean", str(MEAN), "--std", str(STD), "--no-latency"]


def invoke(*args):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_naive_int8_breaks_the_outlier_model(outlier_cnn, tmp_path):
    out = tmp_path / "naive.onnx"
    r = invoke("quantize", outlier_cnn.onnx, "-o", out, *NORM)
    assert r.exit_code == 0, r.output
    d = outlier_cnn.digits
    assert 100 * (outlier_cnn.torch_accuracy - ort_accuracy(out, d.x_test, d.y_test)) > 0.5


def test_fallback_meets_the_budget_and_names_the_layers(outlier_cnn, tmp_path):
    out, js = tmp_path / "q.onnx", tmp_path / "q.json"
    r = invoke("quantize", outlier_cnn.onnx, "-o", out, *NORM, "--max-accuracy-drop", "0.5", "--json", js)
    assert r.exit_code == 0, r.output
    report = json.loads(js.read_text())
    assert report["naive_drop"] > 0.5 and report["drop"] <= 0.5 and report["budget_met"] is True
    fb = report["fallback"]
    # the two convolutions on either side of the outlier tensor (PyTorch module paths from provenance)
    assert set(fb["kept"]) == {"features.0", "features.3"}
    ranked = [s["layer"] for s in fb["sensitivities"]]
    assert set(ranked[:2]) == {"features.0", "features.3"} and len(ranked) == 5
    assert "features.0" in r.output and "features.3" in r.output and "most sensitive #1 of 5" in r.output
    d = outlier_cnn.digits
    assert abs(100 * (outlier_cnn.torch_accuracy - ort_accuracy(out, d.x_test, d.y_test))) <= 0.5
    # the kept layers' convolutions read float weights; the others read dequantized int8
    model = onnx.load(str(out))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        source = {p.key: p.value for p in node.metadata_props}["portanet.source"]
        weight_from = producers.get(node.input[1])
        quantized = weight_from is not None and weight_from.op_type == "DequantizeLinear"
        assert quantized == (source not in fb["kept"]), source
    assert json.loads({p.key: p.value for p in model.metadata_props}["portanet.quantization"])["kept_float"] \
        == fb["kept"]

