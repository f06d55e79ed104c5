"""The case study (``make demo``) in its reduced mode: the whole pipeline runs as a script, and
its report is checked for form and for parity within tolerance in every framework.

Parity is checked twice: through the report's own columns, and independently from the arrays
the run kept (the source framework's outputs next to the converted model's, plus the converted
ONNX files run here by plain ONNX Runtime)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "model_zoo" / "case_study.py"
FRAMEWORKS = ["pytorch", "keras", "caffe", "mxnet", "cntk"]
RTOL, ATOL = 1e-4, 1e-5


def _mxnet_available() -> bool:
    from model_zoo.mxnet import mxnet_python

    return mxnet_python() is not None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("case_study")
    # one thread: the suite runs in parallel with other tests; the numbers are not asserted
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    return out, proc


@pytest.fixture(scope="module")
def report(run: tuple[Path, subprocess.CompletedProcess]) -> dict:
    out, proc = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _rows(report: dict) -> dict[str, dict]:
    """The framework rows (the int8 row after them is checked on its own)."""
    return {r["key"]: r for r in report["rows"] if r["key"] in FRAMEWORKS}


def test_every_framework_has_a_row(report: dict) -> None:
    rows = _rows(report)
    assert list(rows) == FRAMEWORKS
    for key, row in rows.items():
        if key == "mxnet" and not _mxnet_available():
            assert row["status"].startswith("skipped:") and "make mxnet-env" in row["status"]
            continue
        assert row["status"] == "ok", f"{key}: {row['status']}"


def test_parity_column_within_tolerance(report: dict) -> None:
    for row in _rows(report).values():
        if row["status"] != "ok":
            continue
        assert {p["backend"] for p in row["parity"]} == {"ort", "torch"}, row["key"]
        assert row["parity_passed"] is True, row
        # the outputs are probabilities (|ref| <= 1): elementwise tolerance bounds the max error
        assert 0.0 <= row["parity_max_abs"] <= ATOL + RTOL, row["key"]


def test_kept_outputs_match_the_source_independently(run, report: dict) -> None:
    """The source framework's outputs (PyTorch, Keras, OpenCV DNN, mxnet; the PyTorch twin for
    CNTK) against the converted model on both backends and against the saved ONNX file run by
    onnxruntime directly: |converted - source| <= atol + rtol * |source| everywhere."""
    import onnxruntime as ort

    out, _ = run
    for row in _rows(report).values():
        if row["status"] != "ok":
            continue
        kept = np.load(out / "parity" / f"{row['key']}.npz")
        ref, x = kept["reference"], kept["input"]
        assert ref.shape == (report["parity_images"], 10)
        np.testing.assert_allclose(ref.sum(axis=1), 1.0, rtol=1e-5)  # the source's softmax
        for backend in ("ort", "torch"):
            np.testing.assert_allclose(kept[backend], ref, rtol=RTOL, atol=ATOL, err_msg=f"{row['key']}/{backend}")
        sess = ort.InferenceSession(str(out / row["onnx"]), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=f"{row['key']} ONNX file")


def test_measurements_are_present(report: dict) -> None:
    for row in _rows(report).values():
        if row["status"] != "ok":
            continue
        for b in ("ort", "torch"):
            acc = row["accuracy"][b]
            assert 0.0 <= acc <= 1.0
            # parity within 1e-5 can flip the arg-max only at near ties
            assert abs(acc - row["source_accuracy"]) <= 0.005, row["key"]
        converted = {"ort/1", "ort/64", "torch/1", "torch/64"}
        # the source's own forward is timed where it runs in this process
        native = {"source/1", "source/64"} if row["key"] in ("pytorch", "keras", "caffe") else set()
        assert set(row["latency_ms"]) == converted | native, row["key"]
        assert all(v > 0 and np.isfinite(v) for v in row["latency_ms"].values())
        if row["key"] in ("pytorch", "keras"):
            assert row["train_seconds_per_epoch"] > 0 and row["train_epochs"] == 1
        else:
            assert row["train_seconds_per_epoch"] is None and row["weights"] == "from PyTorch"


def test_markdown_table_is_well_formed(run, report: dict) -> None:
    out, _ = run
    md = (out / "report.md").read_text()
    all_lines = md.splitlines()
    start = next(i for i, ln in enumerate(all_lines) if ln.startswith("|"))
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), all_lines[start:]))  # the first table
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[0] == "Framework" and header[-2:] == ["Max parity err", "Parity"]
    assert re.fullmatch(r"\|(---\|)+", lines[1]) and lines[1].count("---") == len(header)
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    assert [cells[0] for cells in body] == [r["title"] for r in report["rows"]]
    for cells, row in zip(body, report["rows"]):
        assert len(cells) == len(header)
        if row["status"] == "ok":
            assert cells[-1] == "pass"
            if row["key"] in FRAMEWORKS:  # the int8 row's error is quantization's, judged by its budget
                assert float(cells[-2]) <= ATOL + RTOL
    assert "![latency and accuracy per framework](report.png)" in md
    assert "What the columns mean" in md


def test_int8_row(run, report: dict) -> None:
    """The converted PyTorch model quantized to int8: the file runs in plain ONNX Runtime with the
    reported accuracy (the quick run's barely trained CNN makes no accuracy claim; the trained
    CNN's budget is tested in tests/quantize)."""
    import onnx
    import onnxruntime as ort

    from model_zoo.case_study_nets import load_digits

    out, _ = run
    (row,) = [r for r in report["rows"] if r["key"] == "int8"]
    assert row["status"] == "ok", row["status"]
    assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(out / row["onnx"])).graph.node}
    sess = ort.InferenceSession(str(out / row["onnx"]), providers=["CPUExecutionProvider"])
    d = load_digits(None)
    (probs,) = sess.run(None, {sess.get_inputs()[0].name: d.x_test})
    assert float(np.mean(np.argmax(probs, 1) == d.y_test)) == pytest.approx(row["accuracy"]["ort"], abs=1e-12)
    assert set(row["latency_ms"]) == {"ort/1", "ort/64"} and "kB vs float32" in row["notes"][0]


def test_picture_is_a_png(run) -> None:
    out, _ = run
    import matplotlib.image as mpimg

    data = (out / "report.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out / "report.png")
    assert img.shape[0] > 100 and img.shape[1] > 300


def test_table_printed(run) -> None:
    _, proc = run
    assert "portanet case study" in proc.stdout
    for title in ("PyTorch", "Keras", "Caffe", "MXNet", "CNTK"):
        assert title in proc.stdout
    assert "report:" in proc.stdout


def test_finetuned_model_exported(run, report: dict) -> None:
    """The fine-tuned Caffe model is a new ONNX file with changed weights; its accuracy in the
    report is what plain onnxruntime measures on the test split."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from model_zoo.case_study_nets import load_digits

    out, _ = run
    ft = report["finetune"]
    assert ft["status"] == "ok" and ft["framework"] == "Caffe"
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(out / "models" / "caffe.onnx").graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(out / ft["onnx"]).graph.initializer}
    assert set(before) == set(after)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    digits = load_digits()
    sess = ort.InferenceSession(str(out / ft["onnx"]), providers=["CPUExecutionProvider"])
    (probs,) = sess.run(None, {sess.get_inputs()[0].name: digits.x_test})
    assert float(np.mean(probs.argmax(1) == digits.y_test)) == pytest.approx(ft["accuracy_after"], abs=1e-9)


def test_export_round_trip(run, report: dict) -> None:
    """`portanet export` of the converted Caffe model: the PyTorch code (fine-tuned with a plain
    PyTorch loop) and the TFLite file, both verified against ONNX Runtime; their accuracy before
    fine-tuning equals the converted model's on ONNX Runtime (same weights, same test split)."""
    out, _ = run
    exp = report["export"]
    assert exp["status"] == "ok", exp
    rows = {r["target"]: r for r in exp["rows"]}
    assert set(rows) == {"pytorch", "tflite"}
    ort_acc = _rows(report)["caffe"]["accuracy"]["ort"]
    for r in rows.values():
        assert r["parity_passed"] is True and (out / r["file"]).exists()
        # at most one test image may flip (a near-tie between two classes)
        assert r["accuracy_before"] == pytest.approx(ort_acc, abs=1.0 / report["data"]["test"] + 1e-12)
    py = rows["pytorch"]
    assert "self.conv1 = nn.Conv2d(1, 16" in (out / py["file"]).read_text()
    assert (out / "export" / py["weights"]).exists() and 0.0 <= py["accuracy_after"] <= 1.0


def test_load_digits_reads_any_mnist_directory(tmp_path: Path) -> None:
    """``--data DIR``: an MNIST-format directory is scaled to [0, 1] and standardised."""
    from model_zoo.case_study_nets import MEAN, STD, load_digits
    from portanet.data import write_idx

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,), dtype=np.uint8))
    d = load_digits(tmp_path)
    assert d.x_train.shape == (6, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
    from portanet.data import read_idx

    raw = read_idx(tmp_path / "train-images-idx3-ubyte").astype(np.float64)
    np.testing.assert_allclose(d.x_train[:, 0], (raw / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-6)


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--frameworks", "theano", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown framework(s) theano" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_missing_data_directory_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nowhere"), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "nowhere: no such file or directory" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr
    assert not out.exists()
