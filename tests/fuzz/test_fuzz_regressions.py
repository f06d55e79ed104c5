"""Regression tests for the causes the first fuzz campaign found: each builds the mutated file
from a zoo model (as the fuzzer did) and expects one clean ``PortanetError`` line, no output
file and nothing else on stderr (see ``harness.convert_case``)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import onnx
import pytest

from tests.fuzz import campaign
from tests.fuzz.harness import convert_case
from tests.fuzz.mutators import params_fields, parse_pb, serialize_pb


def _copy(src: Path, folder: Path, name: str | None = None) -> Path:
    dst = folder / (name or src.name)
    dst.write_bytes(src.read_bytes())
    return dst


def _expect_error(paths: list[Path], tmp_path: Path, fragment: str, **options) -> str:
    out = tmp_path / "out" / "converted.onnx"
    out.parent.mkdir(exist_ok=True)
    res = convert_case(paths, out, **options)
    assert res.kind == "error", str(res)
    assert fragment in res.message, res.message
    assert not out.exists()
    return res.message


def _rezip(src: bytes, edit) -> bytes:
    """Rewrite a zip archive; ``edit(name, data)`` returns new data, or None to drop the member."""
    zin = zipfile.ZipFile(io.BytesIO(src))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info, data)
    return buf.getvalue()


# --------------------------------------------------------------------------- 1. ONNX external data
def test_onnx_external_data_shorter_than_declared(tmp_path):
    seed = campaign.onnx_seed()
    model = _copy(seed["ext_onnx"], tmp_path)
    data = seed["ext_data"].read_bytes()
    (tmp_path / seed["ext_data"].name).write_bytes(data[: len(data) - 100])
    _expect_error([model], tmp_path, "(truncated data file?)")


def test_onnx_external_length_disagrees_with_shape(tmp_path):
    seed = campaign.onnx_seed()
    _copy(seed["ext_data"], tmp_path)
    proto = onnx.load(str(seed["ext_onnx"]), load_external_data=False)
    t = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    t.dims[0] *= 1000  # the declared shape now needs 1000x the bytes its length says
    path = tmp_path / seed["ext_onnx"].name
    onnx.save(proto, str(path))
    _expect_error([path], tmp_path, "but its external data length is")


# ---------------------------------------------------------------- 2. corrupt zip in format detection
def test_corrupt_zip_central_directory_in_detection(tmp_path):
    data = bytearray(campaign.torch_seed()["pt2"].read_bytes())
    cd = data.find(b"PK\x01\x02")  # first central-directory record: is_zipfile still says yes
    data[cd + 3] = 0x03
    bad = tmp_path / "model.pt2"
    bad.write_bytes(bytes(data))
    assert zipfile.is_zipfile(bad)
    _expect_error([bad], tmp_path, "model.pt2")


# ---------------------------------------------------------------------- 3. ONNX strings not UTF-8
@pytest.mark.parametrize("where", ["producer_name", "node_name"])
def test_onnx_string_not_utf8(tmp_path, where):
    tree = parse_pb(campaign.onnx_seed()["onnx"].read_bytes())
    if where == "producer_name":  # ModelProto.producer_name = 2
        field = next(f for f in tree if f[0] == 2)
    else:  # ModelProto.graph = 7 -> GraphProto.node = 1 -> NodeProto.name = 3
        graph = next(f for f in tree if f[0] == 7)[2]
        node = next(f for f in graph if f[0] == 1)[2]
        field = next(f for f in node if f[0] == 3)
    field[2] = b"\xff\xfe\x80"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(serialize_pb(tree))
    _expect_error([bad], tmp_path, "is not valid UTF-8 text")


# ---------------------------------------------------------------------- 4. unknown tensor data type
def test_onnx_unknown_tensor_data_type(tmp_path):
    proto = onnx.load(str(campaign.onnx_seed()["onnx"]))
    proto.graph.initializer[0].data_type = 2**31 - 1
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    _expect_error([bad], tmp_path, "unknown data type 2147483647")


def test_onnx_raw_data_size_disagrees_with_shape(tmp_path):
    proto = onnx.load(str(campaign.onnx_seed()["onnx"]))
    t = proto.graph.initializer[1]
    t.raw_data = t.raw_data + t.raw_data
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    _expect_error([bad], tmp_path, "but holds")


# ------------------------------------------------------------------ 5. MXNet integer beyond int64
@pytest.mark.mxnet
def test_mxnet_integer_attribute_beyond_int64(tmp_path):
    seed = campaign.mxnet_seed()
    doc = json.loads(seed["symbol"].read_text())
    conv = next(n for n in doc["nodes"] if n["op"] == "Convolution")
    conv["attrs"]["stride"] = "(99999999999999999999, 1)"
    sym = tmp_path / seed["symbol"].name
    sym.write_text(json.dumps(doc))
    params = _copy(seed["params"], tmp_path)
    _expect_error([sym, params], tmp_path, "out of the 64-bit integer range", input_shapes={"data": [1, 1, 28, 28]})


# --------------------------------------------------------------------- 6. CNTK entry without value
def test_cntk_dictionary_entry_without_value(tmp_path):
    from portanet.converters.cntk.schema import VALUE_TYPES, message_class

    msg = message_class("Dictionary").FromString(campaign.cntk_seed()["model"].read_bytes())
    funcs = msg.data["primitive_functions"].vector_value.value
    first = funcs[0].dictionary_value
    first.data["version"].value_type = VALUE_TYPES["None"]  # the entry stays, its value is gone
    bad = tmp_path / "bad.model"
    bad.write_bytes(msg.SerializeToString())
    _expect_error([bad], tmp_path, "'version' of")


# ---------------------------------------------------------------- 7. corrupt .pt2: torch's traceback
def test_pt2_missing_archive_version_is_one_quiet_line(tmp_path):
    src = campaign.torch_seed()["pt2"].read_bytes()
    bad = tmp_path / "model.pt2"
    bad.write_bytes(_rezip(src, lambda name, data: None if name.endswith("/archive_version") else data))
    _expect_error([bad], tmp_path, "not a readable torch.export .pt2 archive")
    # end to end: the console script prints exactly one line
    out = tmp_path / "cli.onnx"
    proc = subprocess.run([sys.executable, "-m", "portanet.cli", "convert", str(bad), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: "), proc.stderr
    assert not out.exists()


# -------------------------------------------------------- 8. TorchScript: compiler excerpts, warnings
def test_torchscript_code_that_does_not_compile_is_one_quiet_line(tmp_path):
    src = campaign.torch_seed()["torchscript"].read_bytes()

    def edit(name: str, data: bytes) -> bytes:
        if "/code/" in name and name.endswith(".py") and b")" in data:
            i = data.rindex(b")")
            return data[:i] + b":" + data[i + 1 :]
        return data

    bad = tmp_path / "model.pt"
    bad.write_bytes(_rezip(src, edit))
    _expect_error([bad], tmp_path, "not a readable TorchScript archive", input_shapes={"": [2, 1, 28, 28]})


# ------------------------------------------------------- extra: Caffe packed data not whole floats
def test_caffemodel_blob_length_not_multiple_of_4(tmp_path):
    from portanet.converters.caffe import schema

    seed = campaign.caffe_seed()
    net = schema.RawNetParameter()
    net.ParseFromString(seed["caffemodel"].read_bytes())
    layer = next(lay for lay in net.layer if len(lay.blobs))
    layer.blobs[0].data = layer.blobs[0].data[:-2]
    bad = tmp_path / seed["caffemodel"].name
    bad.write_bytes(net.SerializeToString())
    proto = _copy(seed["prototxt"], tmp_path)
    _expect_error([proto, bad], tmp_path, "not a multiple of 4")


# ------------------------------------------------------------- extra: MXNet .params huge shape
@pytest.mark.mxnet
def test_mxnet_params_huge_declared_shape(tmp_path):
    seed = campaign.mxnet_seed()
    data = bytearray(seed["params"].read_bytes())
    fields = params_fields(bytes(data))
    # the first array of rank >= 2: its rank field is followed by its dims; make them 0 and 2**62
    rank_at = next(off for i, (off, fmt) in enumerate(fields)
                   if fmt == "<i" and [f for _o, f in fields[i + 1 : i + 3]] == ["<q", "<q"])
    struct.pack_into("<q", data, rank_at + 4, 0)
    struct.pack_into("<q", data, rank_at + 12, 2**62)
    params = tmp_path / seed["params"].name
    params.write_bytes(bytes(data))
    sym = _copy(seed["symbol"], tmp_path)
    _expect_error([sym, params], tmp_path, "larger than any array can be", input_shapes={"data": [1, 1, 28, 28]})


# -------------------------------------------------- memory cap: a config declaring a huge layer
def test_keras_config_declaring_a_huge_layer_fails_without_allocating(tmp_path):
    """Keras builds layers from the config before it reads the weights: Dense(units=25e6) after
    64 features is a 6.4 GB kernel. The load runs under an address-space cap, so Keras' own
    allocation fails and the file is reported as unloadable (nothing near 6 GB is touched)."""
    src = campaign.keras_seed()["keras"].read_bytes()

    def edit(name: str, data: bytes) -> bytes:
        if name == "config.json":
            doc = json.loads(data)
            dense = next(lay for lay in doc["config"]["layers"] if lay["class_name"] == "Dense")
            dense["config"]["units"] = 25_000_000
            return json.dumps(doc).encode()
        return data

    bad = tmp_path / "huge.keras"
    bad.write_bytes(_rezip(src, edit))
    _expect_error([bad], tmp_path, "Keras cannot load the model")


def test_onnx_duplicate_node_names(tmp_path):
    """onnx.checker accepts two nodes of one name, ONNX Runtime refuses the model: so does portanet."""
    proto = onnx.load(str(campaign.onnx_seed()["onnx"]))
    proto.graph.node[1].name = proto.graph.node[0].name
    bad = tmp_path / "dup.onnx"
    onnx.save(proto, str(bad))
    _expect_error([bad], tmp_path, "two nodes are named")
