"""Bad inputs: each fails with one PortanetError line naming the file, the layer and what
was expected vs received — and the CLI exits 2 without a traceback or an output file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from portanet.cli import cli
from portanet.converters.registry import ConvertOptions, convert_paths
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError, UnsupportedOpError


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


def test_prototxt_syntax_error(tmp_path, zoo):
    proto, model = zoo("lenet")
    bad = tmp_path / "bad.prototxt"
    lines = proto.read_text().splitlines()
    lines[4] = lines[4].replace("kernel_size: 5", "kernel_size: five")
    bad.write_text("\n".join(lines))
    with pytest.raises(InvalidModelError) as info:
        convert_paths([bad, model])
    msg = _one_line(info.value)
    assert str(bad) in msg and "line 5, column" in msg and "five" in msg


def test_truncated_caffemodel(tmp_path, zoo):
    proto, model = zoo("lenet")
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    with pytest.raises(InvalidModelError) as info:
        convert_paths([proto, cut])
    msg = _one_line(info.value)
    assert str(cut) in msg and "truncated" in msg


def test_blob_shape_disagrees_with_prototxt(tmp_path, zoo):
    proto, model = zoo("lenet")
    changed = tmp_path / "changed.prototxt"
    changed.write_text(proto.read_text().replace("num_output: 20", "num_output: 16"))
    with pytest.raises(ConversionError) as info:
        convert_paths([changed, model])
    msg = _one_line(info.value)
    assert "layer 'conv1' (Convolution)" in msg
    assert "expected shape (16, 1, 5, 5)" in msg and "received (20, 1, 5, 5)" in msg
    assert str(model) in msg


def test_blob_count_disagrees_with_prototxt(tmp_path, zoo):
    """A bias blob in the caffemodel for ``bias_term: false``: Caffe refuses it, so does portanet."""
    proto, model = zoo("lenet")
    changed = tmp_path / "nobias.prototxt"
    changed.write_text(proto.read_text().replace("num_output: 10 }", "num_output: 10 bias_term: false }"))
    with pytest.raises(ConversionError) as info:
        convert_paths([changed, model])
    msg = _one_line(info.value)
    assert "layer 'ip2' (InnerProduct)" in msg and "expected 1 blob(s) (weights)" in msg and "received 2" in msg


def test_bottom_no_layer_produces(tmp_path):
    proto = tmp_path / "d.prototxt"
    proto.write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "dta" top: "y" }\n'
    )
    with pytest.raises(ConversionError) as info:
        convert_paths([proto])
    msg = _one_line(info.value)
    assert str(proto) in msg and "layer 'relu' (ReLU)" in msg and "bottom 'dta'" in msg and "data" in msg


@pytest.mark.parametrize("suffix", [".prototxt", ".caffemodel"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(InvalidModelError) as info:
        convert_paths([path])
    assert str(path) in _one_line(info.value) and "empty" in str(info.value)


def test_unsupported_layers_listed_together_before_converting(tmp_path):
    """Every unsupported type with counts and names, raised before weights are needed."""
    proto = tmp_path / "ssd.prototxt"
    proto.write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        "convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layer { name: "ps1" type: "PSROIPooling" bottom: "conv" bottom: "data" top: "ps1" }\n'
        'layer { name: "ps2" type: "PSROIPooling" bottom: "conv" bottom: "data" top: "ps2" }\n'
        'layer { name: "py" type: "Python" bottom: "conv" top: "py" '
        'python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" } }\n'
        'layer { name: "prop" type: "Proposal" bottom: "ps1" bottom: "ps2" top: "prop" }\n'
    )
    with pytest.raises(UnsupportedOpError) as info:
        convert_paths([proto])
    err = info.value
    assert set(err.unsupported) == {"PSROIPooling", "Python", "Proposal"}
    assert err.unsupported["PSROIPooling"] == ["ps1", "ps2"] and err.unsupported["Proposal"] == ["prop"]
    msg = _one_line(err)
    assert "4 unsupported layer(s) of 3 type(s)" in msg and "PSROIPooling x2 (ps1, ps2)" in msg
    # a Python layer is custom code: the message names its module and class
    assert "py: Python module 'rpn.proposal_layer', class 'ProposalLayer'" in msg


def test_missing_weights(zoo):
    proto, _ = zoo("lenet")
    with pytest.raises(InvalidInputError, match="need weights; pass the .caffemodel"):
        convert_paths([proto])


def test_weights_for_other_net(zoo):
    proto, _ = zoo("lenet")
    _, other = zoo("misc")
    with pytest.raises(ConversionError, match="layer 'conv1' .* has no weights"):
        convert_paths([proto, other])


def test_layer_and_layers_together(tmp_path):
    proto = tmp_path / "mixed.prototxt"
    proto.write_text('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }\n')
    with pytest.raises(InvalidModelError, match="both 'layer' and legacy 'layers'"):
        convert_paths([proto])


def test_two_prototxts(zoo):
    proto, _ = zoo("lenet")
    proto2, _ = zoo("squeezenet")
    with pytest.raises(InvalidInputError, match="two prototxt files"):
        convert_paths([proto, proto2], framework="caffe")


def test_cli_bad_input_exit_2_no_output(tmp_path, zoo):
    proto, model = zoo("lenet")
    changed = tmp_path / "changed.prototxt"
    changed.write_text(proto.read_text().replace("num_output: 50", "num_output: 49"))
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(cli, ["convert", str(changed), str(model), "-o", str(out), "-O", "0"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "layer 'conv2' (Convolution)" in result.output and "expected shape (49, 20, 5, 5)" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [changed]


def test_input_shape_rank_is_checked(zoo):
    proto, model = zoo("lenet")
    with pytest.raises(InvalidInputError, match="input 'data' is declared with rank 4 .* gives 3 dims"):
        convert_paths([proto, model], ConvertOptions(input_shapes={"data": [1, 28, 28]}))
