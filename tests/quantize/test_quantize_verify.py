"""``verify`` on quantized models: judged against the float source (PyTorch eager) by cosine and
top-1 agreement within the recorded budget, not by elementwise parity."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from model_zoo.case_study_nets import MEAN, STD
from portanet.cli import cli

torch = pytest.importorskip("torch")


def _quantize(path, **kw):
    from portanet.ir.io import load_onnx
    from portanet.quantize import QuantizeOptions, quantize

    return quantize(load_onnx(path), None, QuantizeOptions(mean=[MEAN], std=[STD], latency_batches=(), **kw)).model


def test_verify_passes_int8_within_budget_against_pytorch(trained_cnn, tmp_path):
    import portanet
    from portanet.data import DEFAULT_DATA

    q = tmp_path / "q.onnx"
    portanet.save(_quantize(trained_cnn.onnx), q)
    x = torch.from_numpy(trained_cnn.digits.x_test[:2])
    ep = torch.export.export(trained_cnn.module, (x,), dynamic_shapes=({0: torch.export.Dim("N")},))
    pt2 = tmp_path / "cnn.pt2"
    torch.export.save(ep, pt2)
    r = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["verify", str(pt2), "--onnx", str(q), "--data", str(DEFAULT_DATA), "--backends", "ort",
              "--no-certificate"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "vs float source" in r.output and "budget 0.5" in r.output and "2000x1x28x28" in r.output


def test_verify_fails_naive_int8_of_the_outlier_model(outlier_cnn):
    from portanet.parity import verify_model

    model = _quantize(outlier_cnn.onnx)
    x = outlier_cnn.digits.x_test[:500]
    report = verify_model([outlier_cnn.module], model, framework="pytorch", inputs={"": x}, backends=["ort"])
    assert not report.passed and report.bisect is None
    (res,) = report.results
    assert "top-1 differs from the float source" in res.stats.problem


def test_verify_of_fallback_model_passes_on_labelled_data(outlier_cnn):
    """With labels the verdict is the accuracy drop against the source (PyTorch eager); the
    fallback model loses at most the budget there, while its top-1 may still differ on a few
    more samples than the budget (the label-free test is a bound, stricter)."""
    from portanet.data import DEFAULT_DATA
    from portanet.parity import verify_model

    model = _quantize(outlier_cnn.onnx, max_accuracy_drop=0.5)
    report = verify_model([outlier_cnn.module], model, framework="pytorch", data=DEFAULT_DATA, backends=["ort"])
    assert report.passed, report.results[0].stats
    assert "vs float source" in report.results[0].stats.problem
