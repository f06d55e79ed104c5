"""`portanet convert` on MXNet checkpoints: finding the params beside the symbol (highest
epoch unless --epoch), --params, --input-shape, and one-line errors with exit status 2
that leave no output file."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from mxnet_helpers import load_case

from portanet.cli import cli
from portanet.ir.io import load_onnx
from portanet.ir.metadata import FILES_KEY
from portanet.runtime.session import Session

pytestmark = pytest.mark.mxnet


@pytest.fixture()
def ckpt(mx_refs, tmp_path):
    """The conv2d reference model saved as checkpoint "net" at epochs 0 and 3."""
    sym, params, feeds, ref = load_case(mx_refs, "conv2d")
    shutil.copy(sym, tmp_path / "net-symbol.json")
    shutil.copy(params, tmp_path / "net-0000.params")
    shutil.copy(params, tmp_path / "net-0003.params")
    (tmp_path / "net-0010.params.bak").write_bytes(b"not a checkpoint")  # must be ignored
    return tmp_path, feeds, ref


def _convert(*args):
    result = CliRunner().invoke(cli, ["convert", *map(str, args)])
    return result


def _used_params(onnx_path):
    files = json.loads(load_onnx(onnx_path, upgrade=False).metadata_props[FILES_KEY])
    return [f["file"] for f in files if f["file"].endswith(".params")]


def test_convert_finds_highest_epoch_and_matches_mxnet(ckpt):
    folder, feeds, ref = ckpt
    out = folder / "m.onnx"
    result = _convert(folder / "net-symbol.json", "-o", out)
    assert result.exit_code == 0, result.output
    assert _used_params(out) == ["net-0003.params"]
    got = Session(out).run(feeds)
    np.testing.assert_allclose(got["conv_output"], ref["conv_output"], rtol=1e-4, atol=1e-5)


def test_epoch_and_params_flags(ckpt, tmp_path):
    folder, _feeds, _ref = ckpt
    out = folder / "e.onnx"
    assert _convert(folder / "net-symbol.json", "-o", out, "--epoch", "0").exit_code == 0
    assert _used_params(out) == ["net-0000.params"]
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(folder / "net-0000.params", other / "weights.params")
    out2 = folder / "p.onnx"
    result = _convert(folder / "net-symbol.json", "-o", out2, "--params", other / "weights.params")
    assert result.exit_code == 0, result.output
    assert _used_params(out2) == ["weights.params"]


def test_input_shape_flag(ckpt):
    folder, feeds, ref = ckpt
    out = folder / "s.onnx"
    result = _convert(folder / "net-symbol.json", "-o", out, "--input-shape", "data=2x3x9x9")
    assert result.exit_code == 0, result.output
    model = load_onnx(out, upgrade=False)
    dims = [d if isinstance(d, int) else str(d) for d in model.graph.inputs[0].shape]
    assert dims == ["N", 3, 9, 9]  # the batch stays symbolic
    out_dims = list(model.graph.outputs[0].shape)
    assert out_dims[1:] == [4, 5, 5]
    np.testing.assert_allclose(Session(out).run(feeds)["conv_output"], ref["conv_output"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("damage", "args", "message"),
    [
        ("none", ["--epoch", "7"], "no checkpoint for epoch 7"),
        ("no_params", [], "no 'net-NNNN.params' beside it; pass the weights with --params"),
        ("truncate", [], "truncated or corrupt .params file"),
        ("not_json", [], "not an MXNet symbol file: invalid JSON"),
        ("none", ["--input-shape", "image=1x3x9x9"], "no input named 'image'"),
    ],
)
def test_bad_inputs_exit_2_one_line_no_output(ckpt, damage, args, message):
    folder, _feeds, _ref = ckpt
    if damage == "no_params":
        for p in folder.glob("*.params"):
            p.unlink()
    elif damage == "truncate":
        p = folder / "net-0003.params"
        p.write_bytes(p.read_bytes()[:-7])
    elif damage == "not_json":
        (folder / "net-symbol.json").write_text('{"nodes": [oops')
    out = folder / "bad.onnx"
    result = _convert(folder / "net-symbol.json", "-o", out, "--framework", "mxnet", *args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists()


def test_unnamed_input_shape_and_run_at_other_batch(ckpt):
    folder, feeds, ref = ckpt
    out = folder / "u.onnx"
    assert _convert(folder / "net-symbol.json", "-o", out, "--input-shape", "1x3x9x9").exit_code == 0
    # converted with batch 1 in the shape, run at the reference's batch of 2
    np.testing.assert_allclose(Session(out).run(feeds)["conv_output"], ref["conv_output"], rtol=1e-4, atol=1e-5)


def test_input_whose_shape_cannot_be_told(mx_refs, tmp_path):
    sym, params, _feeds, _ref = load_case(mx_refs, "split")  # data feeds SliceChannel directly
    out = tmp_path / "split.onnx"
    result = _convert(sym, "-o", out)
    assert result.exit_code == 2
    assert "pass it with --input-shape data=" in result.output and not out.exists()
    assert _convert(sym, "-o", out, "--input-shape", "data=2x6x2").exit_code == 0


def test_params_file_alone_finds_its_symbol(ckpt):
    folder, feeds, ref = ckpt
    out = folder / "fromparams.onnx"
    result = _convert(folder / "net-0000.params", "-o", out)
    assert result.exit_code == 0, result.output
    assert _used_params(out) == ["net-0000.params"]
    np.testing.assert_allclose(Session(out).run(feeds)["conv_output"], ref["conv_output"], rtol=1e-4, atol=1e-5)
