"""`portanet convert` on Caffe files: prototxt + caffemodel in either order, a caffemodel
alone, --prototxt/--weights flags, --input-shape; the written ONNX matches OpenCV."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from portanet.cli import cli
from portanet.parity.runners.caffe import run_opencv as run_reference
from portanet.runtime.session import Session


def _convert(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["convert", *args])
    assert result.exit_code == 0, result.output


def _check_against_opencv(path, sources, batch: int = 2) -> None:
    onnx.checker.check_model(str(path))
    session = Session(str(path))
    feeds = session.random_feeds(batch=batch, seed=11)
    got = session.run(feeds)
    ref = run_reference(sources, feeds)
    for name, arr in got.items():
        np.testing.assert_allclose(arr, ref[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("order", ["prototxt_first", "caffemodel_first", "caffemodel_alone", "flags"])
def test_convert_forms(tmp_path, zoo, order):
    proto, model = zoo("caffenet")
    out = tmp_path / "m.onnx"
    args = {
        "prototxt_first": [str(proto), str(model)],
        "caffemodel_first": [str(model), str(proto)],
        "caffemodel_alone": [str(model)],
        "flags": [str(model), "--prototxt", str(proto), "--weights", str(model)],
    }[order]
    _convert([*args, "-o", str(out), "-O", "0"])
    _check_against_opencv(out, [proto, model])


def test_convert_default_pipeline_and_opset(tmp_path, zoo):
    """The default command line (optimizer level 1) and an older opset."""
    proto, model = zoo("resnet")
    out = tmp_path / "r.onnx"
    _convert([str(proto), str(model), "-o", str(out), "--opset", "13"])
    assert onnx.load(str(out)).opset_import[0].version == 13
    _check_against_opencv(out, [proto, model])


def test_convert_with_input_shape(tmp_path, zoo):
    proto, model = zoo("lenet_train_test")
    out = tmp_path / "t.onnx"
    _convert([str(proto), str(model), "-o", str(out), "-O", "0", "--input-shape", "data=3x1x28x28"])
    m = onnx.load(str(out))
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [3, 1, 28, 28]
    _check_against_opencv(out, [proto, model], batch=3)


def test_missing_input_shape_is_a_one_line_error(tmp_path, zoo):
    proto, model = zoo("lenet_train_test")
    out = tmp_path / "t.onnx"
    result = CliRunner().invoke(cli, ["convert", str(proto), str(model), "-o", str(out)])
    assert result.exit_code == 2
    assert "--input-shape data=" in result.output and "Traceback" not in result.output
    assert not out.exists()
