"""What a newcomer hits first: every stumble found by following the README as a new user, one
test each (the README's own command blocks run in tests/test_readme.py)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from portanet.cli import cli
from portanet.parity.degenerate import degenerate_notes, degenerate_reason

REPO = Path(__file__).resolve().parents[1]
PORTANET = Path(sys.executable).parent / "portanet"  # the console script, as a user runs it


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def lenet() -> tuple[Path, Path]:
    from model_zoo.caffe.writer import build

    return build("lenet")


@pytest.fixture(scope="module")
def lenet_onnx(lenet, tmp_path_factory) -> Path:
    import portanet

    out = tmp_path_factory.mktemp("lenet") / "lenet.onnx"
    portanet.save(portanet.convert(*map(str, lenet)), out)
    return out


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# 1. the flag form of the Caffe sources ---------------------------------------------------------
def test_convert_by_flags_alone(lenet, tmp_path):
    prototxt, weights = lenet
    out = tmp_path / "n.onnx"
    res = invoke("convert", "--prototxt", prototxt, "--weights", weights, "-o", out)
    assert res.exit_code == 0, res.output
    assert out.is_file()


def test_no_source_at_all_is_one_line(tmp_path):
    line = _one_line_error(invoke("convert", "-o", tmp_path / "n.onnx"))
    assert "no source model given" in line and "--prototxt" in line
    assert not (tmp_path / "n.onnx").exists()


# 2. a weights-only caffemodel given alone ------------------------------------------------------
def test_weights_only_caffemodel_asks_for_the_prototxt(lenet, tmp_path):
    from portanet.converters.caffe import schema

    prototxt, weights = lenet
    raw = schema.RawNetParameter()
    raw.ParseFromString(weights.read_bytes())
    for layer in raw.layer:  # what published weights-only files look like: names, types, blobs
        del layer.bottom[:]
        del layer.top[:]
    stripped = tmp_path / "weights_only.caffemodel"
    stripped.write_bytes(raw.SerializeToString())
    for extra in ([], ["--input-shape", "data=1x1x28x28"]):
        line = _one_line_error(invoke("convert", stripped, "-o", tmp_path / "n.onnx", *extra))
        assert "weights only" in line and "deploy" in line and "prototxt" in line, line
        assert "IndexError" not in line
    assert not (tmp_path / "n.onnx").exists()
    # with its prototxt the same file converts
    res = invoke("convert", prototxt, stripped, "-o", tmp_path / "n.onnx")
    assert res.exit_code == 0, res.output


# 3. a .pt2 with a static batch says so at convert time -----------------------------------------
def test_static_batch_pt2_warns_once_with_the_fix(tmp_path, caplog):
    import torch

    import portanet
    from model_zoo.pytorch.models import build

    model = build("lenet5").eval()
    program = torch.export.export(model, (torch.randn(1, 1, 32, 32),))  # no dynamic_shapes: batch 1 baked
    path = tmp_path / "static.pt2"
    torch.export.save(program, path)
    with caplog.at_level(logging.WARNING, logger="portanet"):
        ir_model = portanet.convert(str(path))
    warnings = [r.getMessage() for r in caplog.records if "batch dimension" in r.getMessage()]
    assert len(warnings) == 1 and "dynamic_shapes" in warnings[0], caplog.text
    assert ir_model.graph.inputs[0].shape[0] == 1
    # the README's recipe (dynamic_shapes) gives a symbolic batch and no warning
    caplog.clear()
    dyn = torch.export.export(model, (torch.randn(2, 1, 32, 32),),
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dyn, tmp_path / "dynamic.pt2")
    with caplog.at_level(logging.WARNING, logger="portanet"):
        ir_dyn = portanet.convert(str(tmp_path / "dynamic.pt2"))
    assert not [r for r in caplog.records if "batch dimension" in r.getMessage()]
    assert not isinstance(ir_dyn.graph.inputs[0].shape[0], int)


# 4. --model-class from a package in the working directory --------------------------------------
def test_model_class_imports_from_the_working_directory(tmp_path):
    import torch

    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        "import torch.nn as nn\n\n\n"
        "def TinyNet():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))\n"
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(PORTANET), "convert", "weights.pth", "--model-class", "mypkg.models:TinyNet",
                           "--input-shape", "1x1x8x8", "-o", "tiny.onnx"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "tiny.onnx").is_file()
    # a package that exists nowhere: one line that says how to fix it
    proc = subprocess.run([str(PORTANET), "convert", "weights.pth", "--model-class", "nopkg.models:Net",
                           "--input-shape", "1x1x8x8", "-o", "x.onnx"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "nopkg" in proc.stderr and "PYTHONPATH" in proc.stderr and "Traceback" not in proc.stderr


def _normalized(p: np.ndarray) -> np.ndarray:
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


# 5. verdicts on degenerate outputs --------------------------------------------------------------
@pytest.mark.parametrize(
    ("arrays", "expect"),
    [
        ([np.full((2, 10), 0.1, np.float32)], "are constant"),
        ([np.array([[1.0, np.nan]], np.float32)], "NaN"),
        ([np.tile(np.arange(10, dtype=np.float32), (3, 1)), np.arange(10, dtype=np.float32)[None]],
         "the same for all 4 input samples"),
        ([_normalized(np.full((2, 1000), 1e-3) + np.random.default_rng(0).uniform(-1e-4, 1e-4, (2, 1000)))],
         "near-uniform"),
    ],
)
def test_degenerate_reasons(arrays, expect):
    reason = degenerate_reason(arrays)
    assert reason is not None and expect in reason, reason


def test_informative_outputs_have_no_note():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 10)).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert degenerate_notes({"logits": [logits], "prob": [probs[:2], probs[2:]]}) == []


def test_verify_readme_mobilenetv2_says_not_informative():
    """The README's Keras example: an untrained MobileNetV2 gives (nearly) the same output for
    every input, so PASS proves nothing — the report must say so (reference: Keras itself)."""
    import keras

    import portanet

    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3))
    report = portanet.verify(model, shapes=["2x96x96x3"], backends=["ort"], bisect=False)
    assert report.notes, report.summary()
    assert "not informative" in report.summary()
    assert report.as_dict()["informative"] is False
    assert "not_informative" in report.certificate()


def test_verify_trained_like_model_has_no_note(lenet):
    """Random (untrained) Caffe LeNet weights still give input-dependent outputs: no note."""
    import portanet

    report = portanet.verify(*map(str, lenet), shapes=["3x1x28x28"], backends=["ort"], bisect=False)
    assert report.passed and not report.notes, report.notes


# 9. Ctrl-C during training says how to continue -------------------------------------------------
def test_ctrl_c_in_train_names_resume(lenet_onnx, tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (256, 28, 28), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, 256)
    np.savez(tmp_path / "tiny.npz", x=x, y=y)
    out = tmp_path / "t.onnx"
    proc = subprocess.Popen([str(PORTANET), "train", str(lenet_onnx), "--data", "tiny.npz", "-o", str(out),
                             "--epochs", "500", "--batch-size", "64"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "t.checkpoints"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not list(ckpts.glob("epoch-*.pt")):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err and "portanet train" in err and "Traceback" not in err, err
    assert not out.exists()


# 10. convert --verify prints its verdict without -v ---------------------------------------------
def test_convert_verify_prints_the_verdict(lenet, tmp_path):
    res = invoke("convert", *lenet, "-o", tmp_path / "n.onnx", "--verify")
    assert res.exit_code == 0, res.output
    assert "parity OK" in res.output and "cosine" not in res.output
    res = invoke("-v", "convert", *lenet, "-o", tmp_path / "n2.onnx", "--verify")
    assert res.exit_code == 0, res.output
    assert "parity OK" in res.output and "cosine" in res.output  # the table with -v


# 11. optimize --check on an already optimal model -----------------------------------------------
def test_optimize_check_nothing_to_change(lenet_onnx, tmp_path):
    once = tmp_path / "o1.onnx"
    assert invoke("optimize", lenet_onnx, "-o", once, "-O2").exit_code == 0
    res = invoke("optimize", once, "-o", tmp_path / "o2.onnx", "-O2", "--check")
    assert res.exit_code == 0, res.output
    assert "nothing to change" in res.output and "Passes (" not in res.output


# 7. bench plot: one panel per batch size ---------------------------------------------------------
def test_bench_figure_one_panel_per_batch_size():
    from portanet.runtime.bench import bench_figure, summarize

    rng = np.random.default_rng(0)
    results = [summarize(b, "cpu", n, list(rng.normal(base * n, base * n * 0.01, 30).clip(1e-6) / 1000))
               for n in (1, 32) for b, base in (("ort", 0.03), ("torch", 0.3))]
    fig = bench_figure(results, "t")
    axes = fig.axes
    assert [a.get_title() for a in axes] == ["batch 1", "batch 32"]
    for ax, n in zip(axes, (1, 32)):
        tallest = max(r.p90_ms for r in results if r.batch == n)
        low, high = ax.get_ylim()
        assert low == 0 and tallest < high < 2 * tallest  # each panel scaled to its own bars, linear
        assert ax.get_yscale() == "linear" and ax.get_ylabel()


def test_bench_cli_reports_conditions_and_spread(lenet_onnx, tmp_path):
    res = invoke("bench", lenet_onnx, "--backends", "ort", "--batch-sizes", "1,4", "--iters", "5",
                 "--plot", tmp_path / "b.png")
    assert res.exit_code == 0, res.output
    assert "spread" in res.output and "load average" in res.output
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_case_study_report_states_conditions(tmp_path):
    """The demo report's markdown says under which load and threads it measured, flags
    unreliable figures, and draws one latency panel per batch size."""
    from model_zoo.case_study_report import CaseStudyResult, FrameworkRow, conditions_markdown, plot

    row = FrameworkRow("caffe", "Caffe", "OpenCV DNN", "from PyTorch", source_accuracy=0.97,
                       accuracy={"ort": 0.97, "torch": 0.97})
    row.latency_ms = {"ort/1": 0.03, "ort/64": 1.1, "torch/1": 0.3, "torch/64": 9.0, "source/1": 0.07,
                      "source/64": 8.0}
    row.latency_spread = dict.fromkeys(row.latency_ms, 0.1)
    row.latency_unreliable = {"torch/64": "machine busy: 1-min load average 9.00 on 2 cores"}
    mx = FrameworkRow("mxnet", "MXNet", "mxnet 1.9.1", "from PyTorch", source_accuracy=0.97,
                      accuracy={"ort": 0.97, "torch": 0.97}, latency_ms={"ort/1": 0.03, "ort/64": 0.7,
                                                                       "torch/1": 0.3, "torch/64": 5.0})
    result = CaseStudyResult(data={}, settings={"threads": 1, "bench": {"warmup": 5, "iters": 30}}, rtol=1e-4,
                             atol=1e-5, parity_images=64, rows=[row, mx],
                             conditions={"start": {"load_average": [9.0, 5.0, 2.0], "cpu_count": 2},
                                         "end": {"load_average": [8.0, 5.0, 2.0], "torch_threads": 1}})
    text = conditions_markdown(result)
    assert "[9.0, 5.0, 2.0]" in text and "--threads 1" in text and "unreliable" in text and "Caffe torch b64" in text
    plot(result, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000
    shutil.rmtree(tmp_path, ignore_errors=True)
