"""`portanet train` on bad inputs: exit status 2, one line naming the problem, no output file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from portanet.cli import cli
from portanet.data import DEFAULT_DATA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digits(n: int, seed: int = 0, labels_upto: int = 10, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, *shape), dtype=np.uint8), rng.integers(0, labels_upto, n)


def _fails(args: list[str], out) -> str:
    res = CliRunner().invoke(cli, ["train", *args, "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert not out.exists()
    assert not any(p.suffix in (".json", ".png") for p in out.parent.iterdir())
    return lines[0]


def test_data_directory_missing_files(mlp_path, tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    shutil.copy(DEFAULT_DATA / "train-images-idx3-ubyte.gz", d)
    shutil.copy(DEFAULT_DATA / "t10k-images-idx3-ubyte.gz", d)
    msg = _fails([str(mlp_path), "--data", str(d)], tmp_path / "t.onnx")
    assert str(d) in msg and "missing IDX file(s): train labels (train-labels-idx1-ubyte[.gz])" in msg
    assert "test labels (t10k-labels-idx1-ubyte[.gz])" in msg


def test_labels_out_of_range_for_the_output(mlp_path, tmp_path):
    x, y = _digits(64, labels_upto=12)
    y[0] = 11
    np.savez(tmp_path / "d.npz", x=x, y=y)
    msg = _fails([str(mlp_path), "--data", str(tmp_path / "d.npz")], tmp_path / "t.onnx")
    assert "d.npz: labels range" in msg and "..11 but output 'probs' has 10 classes (expected labels 0..9)" in msg


def test_input_shape_the_model_cannot_take(mlp_path, tmp_path):
    x, y = _digits(32, shape=(3, 32, 32))
    np.savez(tmp_path / "cifar.npz", x=x, y=y)
    msg = _fails([str(mlp_path), "--data", str(tmp_path / "cifar.npz")], tmp_path / "t.onnx")
    assert "cifar.npz: samples of shape 3x32x32 cannot feed model input 'input' of shape Nx1x28x28" in msg


@pytest.mark.parametrize(
    "extra,match",
    [(["--resume"], "no checkpoint (epoch-NNN.pt) to resume from"),
     (["--freeze", "nothing*"], "--freeze pattern(s) nothing* match no parameter"),
     (["--mean", "0.1"], "give both --mean and --std"),
     (["--batch-size", "0"], "batch size must be positive"),
     (["--device", "tpu"], "unknown device 'tpu'")],
)
def test_bad_options(mlp_path, tmp_path, extra, match):
    x, y = _digits(32)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    msg = _fails([str(mlp_path), "--data", str(tmp_path / "d.npz"), "--epochs", "1", *extra], tmp_path / "t.onnx")
    assert match in msg


def test_missing_model_and_output_folder(mlp_path, tmp_path):
    assert "nope.onnx: no such model file" in _fails([str(tmp_path / "nope.onnx")], tmp_path / "t.onnx")
    res = CliRunner().invoke(cli, ["train", str(mlp_path), "-o", str(tmp_path / "no" / "t.onnx")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_resume_continues_from_the_last_checkpoint(mlp_path, tmp_path):
    x, y = _digits(64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    base = [str(mlp_path), "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "t.onnx"), "--batch-size", "32"]
    first = CliRunner().invoke(cli, ["train", *base, "--epochs", "1"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(cli, ["train", *base, "--epochs", "2", "--resume"])
    assert second.exit_code == 0, second.output
    assert "resumed from" in second.output and "epoch-001.pt" in second.output
    assert "trained 2 epoch(s)" in second.output


def test_nproc_checks_inputs_before_starting_workers(mlp_path, tmp_path):
    x, y = _digits(64, labels_upto=12)
    y[0] = 11
    np.savez(tmp_path / "d.npz", x=x, y=y)
    msg = _fails([str(mlp_path), "--data", str(tmp_path / "d.npz"), "--nproc", "2"], tmp_path / "t.onnx")
    assert "has 10 classes" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_nproc_cuda_without_gpus(mlp_path, tmp_path):
    x, y = _digits(64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    msg = _fails([str(mlp_path), "--data", str(tmp_path / "d.npz"), "--nproc", "2", "--device", "cuda"],
                 tmp_path / "t.onnx")
    assert "device 'cuda' requested but torch sees no CUDA device" in msg
