"""The Caffe schema and readers: official field numbers, text and binary parsing, legacy
formats, unknown fields from forks, input declarations and phase/stage rules."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from portanet.converters.caffe import net as caffe_net
from portanet.converters.caffe import reader, schema
from portanet.converters.registry import ConvertOptions, convert_paths, detect
from portanet.errors import InvalidInputError
from portanet.runtime.session import Session

# field numbers from BVLC caffe.proto (and weiliu89's SSD fork)
NUMBERS = {
    "NetParameter": {"name": 1, "input": 3, "input_shape": 8, "input_dim": 4, "state": 6, "layer": 100, "layers": 2},
    "BlobProto": {"shape": 7, "data": 5, "diff": 6, "double_data": 8, "num": 1, "channels": 2, "height": 3,
                  "width": 4},
    "LayerParameter": {
        "name": 1, "type": 2, "bottom": 3, "top": 4, "blobs": 7, "include": 8, "exclude": 9,
        "convolution_param": 106, "pooling_param": 121, "inner_product_param": 117, "batch_norm_param": 139,
        "scale_param": 142, "bias_param": 141, "lrn_param": 118, "eltwise_param": 110, "concat_param": 104,
        "slice_param": 126, "reshape_param": 133, "flatten_param": 135, "softmax_param": 125, "crop_param": 144,
        "input_param": 143, "prelu_param": 131, "elu_param": 140, "power_param": 122, "exp_param": 111,
        "log_param": 134, "threshold_param": 128, "clip_param": 148, "swish_param": 147, "argmax_param": 103,
        "reduction_param": 136, "tile_param": 138, "relu_param": 123, "dropout_param": 108,
        "permute_param": 202, "norm_param": 206,
    },
    "V1LayerParameter": {"bottom": 2, "top": 3, "name": 4, "type": 5, "blobs": 6, "include": 32,
                         "convolution_param": 10, "pooling_param": 19, "inner_product_param": 17, "relu_param": 30},
    "PoolingParameter": {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "global_pooling": 12, "round_mode": 13},
    "ConvolutionParameter": {"num_output": 1, "bias_term": 2, "pad": 3, "kernel_size": 4, "group": 5, "stride": 6,
                             "dilation": 18, "kernel_h": 11, "stride_w": 14, "axis": 16},
    "NetStateRule": {"phase": 1, "min_level": 2, "max_level": 3, "stage": 4, "not_stage": 5},
}


@pytest.mark.parametrize("message", sorted(NUMBERS))
def test_official_field_numbers(message):
    desc = schema.messages()[message].DESCRIPTOR
    assert {name: desc.fields_by_name[name].number for name in NUMBERS[message]} == NUMBERS[message]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def test_hand_encoded_caffemodel(tmp_path):
    """Wire bytes written by hand (not by the schema): layer=100, blobs=7 with packed data=5
    and shape=7, and an unpacked double_data blob (field 8, one fixed64 per value)."""
    w = np.arange(6, dtype=np.float32)
    blob_packed = _field(7, _field(1, b"".join(_varint(d) for d in (2, 3)))) + _field(5, w.tobytes())
    doubles = b"".join(_varint(8 << 3 | 1) + struct.pack("<d", v) for v in (0.5, -1.5))
    blob_double = _field(7, _field(1, _varint(2))) + doubles
    layer = _field(1, b"ip") + _field(2, b"InnerProduct") + _field(7, blob_packed) + _field(7, blob_double)
    layer += _field(999, b"fork-only field")  # unknown to BVLC: kept as an unknown field
    path = tmp_path / "m.caffemodel"
    path.write_bytes(_field(1, b"hand") + _field(100, layer))
    net = reader.read_caffemodel(path)
    assert net.name == "hand" and net.layer[0].type == "InnerProduct"
    arrays = [reader.blob_array(b) for b in net.layer[0].blobs]
    np.testing.assert_array_equal(arrays[0], w.reshape(2, 3))
    np.testing.assert_array_equal(arrays[1], np.array([0.5, -1.5], np.float32))


def test_legacy_blob_dims_win_over_shape():
    blob = schema.raw_messages()["BlobProto"](num=1, channels=1, height=2, width=3)
    blob.shape.dim.extend([6])
    blob.data = np.arange(6, dtype="<f4").tobytes()
    assert reader.blob_array(blob).shape == (1, 1, 2, 3)


def test_unknown_fork_fields_are_tolerated():
    text = """
    name: "ssd"  # comment
    fork_top_level: 3
    layer { name: "p" type: "Pooling" bottom: "x" top: "p"
      pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false }
      some_fork_param { a: 1 nested { b: "c" } } }
    layer { name: "prior" type: "PriorBox" bottom: "p" bottom: "x" top: "prior"
      prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false
                        variance: 0.1 offset: 0.5 step: 8 } }
    """
    net = reader.parse_prototxt_text(text)
    assert net.layer[0].pooling_param.round_mode == 1  # ceil_mode: false == FLOOR
    assert list(net.layer[1].prior_box_param.min_size) == [30.0]


def test_syntax_error_has_line_and_column():
    with pytest.raises(Exception) as info:
        reader.parse_prototxt_text('name: "x"\nlayer {\n  name: "a" type: \n  top: }\n', where="deploy.prototxt")
    msg = str(info.value)
    assert "deploy.prototxt:4:" in msg and "line 4, column" in msg and "\n" not in msg


def _deploy(text: str, **kw):
    return caffe_net.deploy_graph(reader.parse_prototxt_text(text), path="t.prototxt", **kw)


def test_v1_layers_upgrade():
    text = """
    input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
    layers { name: "c" type: CONVOLUTION bottom: "data" top: "c" blobs_lr: 1 convolution_param { num_output: 2 kernel_size: 3 } }
    layers { name: "r" type: RELU bottom: "c" top: "c" }
    layers { name: "a" type: ABSVAL bottom: "c" top: "a" }
    layers { name: "s" type: SOFTMAX_LOSS bottom: "a" bottom: "label" top: "loss" }
    """
    d = _deploy(text)
    assert [(i.name, i.shape) for i in d.inputs] == [("data", [1, 3, 8, 8])]
    assert [(layer.name, layer.type) for layer in d.layers] == [("c", "Convolution"), ("r", "ReLU"), ("a", "AbsVal")]
    assert d.layers[0].param.convolution_param.num_output == 2


def test_input_shape_declarations():
    two = 'input: "a" input_shape { dim: 1 dim: 2 } input: "b" input_shape { dim: 3 dim: 4 dim: 5 }\n'
    assert [(i.name, i.shape) for i in _deploy(two).inputs] == [("a", [1, 2]), ("b", [3, 4, 5])]
    none = 'input: "a"\nlayer { name: "r" type: "ReLU" bottom: "a" top: "r" }\n'
    assert _deploy(none).inputs[0].shape is None


@pytest.mark.parametrize("rule,stages,level,kept", [
    ("include { phase: TEST }", set(), 0, True),
    ("include { phase: TRAIN }", set(), 0, False),
    ("exclude { phase: TEST }", set(), 0, False),
    ('include { stage: "deploy" }', set(), 0, False),   # a stage rule needs the stage
    ('include { stage: "deploy" }', {"deploy"}, 0, True),
    ('include { phase: TEST not_stage: "x" }', {"x"}, 0, False),
    ('include { stage: "a" stage: "b" }', {"a"}, 0, False),
    ('include { phase: TRAIN } include { stage: "a" }', {"a"}, 0, True),  # any rule
    ("include { min_level: 1 }", set(), 0, False),
    ("include { max_level: 1 }", set(), 2, False),
])
def test_state_rules(rule, stages, level, kept):
    text = f"""
    state {{ level: {level} }}
    layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 1 }} }} }}
    layer {{ name: "r" type: "ReLU" bottom: "x" top: "y" {rule} }}
    """
    d = _deploy(text, stages=stages)
    assert [layer.name for layer in d.layers] == (["r"] if kept else [])


def test_input_without_shape_needs_input_shape(tmp_path):
    proto = tmp_path / "d.prototxt"
    proto.write_text('input: "data"\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    with pytest.raises(InvalidInputError, match="--input-shape data="):
        convert_paths([proto])
    model = convert_paths([proto], ConvertOptions(input_shapes={"": [2, 5]}))
    x = np.linspace(-1, 1, 10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(Session(model).run({"data": x})["r"], np.maximum(x, 0))
    with pytest.raises(InvalidInputError, match="no input named 'nope'"):
        convert_paths([proto], ConvertOptions(input_shapes={"nope": [2, 5]}))


def test_detect_by_suffix_and_content(tmp_path, zoo):
    proto, model = zoo("lenet")
    assert detect([proto]).name == "caffe" and detect([model]).name == "caffe"
    renamed = tmp_path / "deploy.txt"
    renamed.write_text(proto.read_text())
    assert detect([renamed]).name == "caffe"


def test_in_place_layer_on_an_input(tmp_path):
    """A layer writing its input blob in place: the graph input keeps the blob's name and the
    output gets a unique one."""
    proto = tmp_path / "d.prototxt"
    proto.write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "neg" type: "Power" bottom: "data" top: "data" power_param { scale: -1 } }\n'
    )
    model = convert_paths([proto])
    assert [v.name for v in model.graph.inputs] == ["data"]
    (out,) = [v.name for v in model.graph.outputs]
    assert out.startswith("data") and out != "data"
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(Session(model).run({"data": x})[out], -x)


def test_prototxt_with_bom_and_crlf(tmp_path, zoo):
    proto, model = zoo("lenet")
    windows = tmp_path / "deploy.prototxt"
    windows.write_bytes(b"\xef\xbb\xbf" + proto.read_text().replace("\n", "\r\n").encode())
    a, b = convert_paths([windows, model]), convert_paths([proto, model])
    feeds = Session(a).random_feeds(seed=1)
    np.testing.assert_array_equal(Session(a).run(feeds)["prob"], Session(b).run(feeds)["prob"])
