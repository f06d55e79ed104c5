"""Bad inputs to the MXNet importer fail with one located PortanetError: truncated params,
a symbol that is not JSON, a node referencing a missing input, a weight missing from the
params file (named), unsupported ops (all listed at once), and mismatched weights."""

from __future__ import annotations

import json
import shutil

import pytest
from mxnet_helpers import load_case

from portanet.converters.mxnet.importer import convert_checkpoint
from portanet.converters.mxnet.params import read_ndarray_list
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError, UnsupportedOpError

pytestmark = pytest.mark.mxnet


@pytest.fixture()
def conv_case(mx_refs, tmp_path):
    """A copy of the conv+BN+relu+FC reference model that a test may damage."""
    sym, params, _feeds, _ref = load_case(mx_refs, "legacy_v09_attr")
    shutil.copy(sym, tmp_path / "net-symbol.json")
    shutil.copy(params, tmp_path / "net-0000.params")
    return tmp_path / "net-symbol.json", tmp_path / "net-0000.params"


def test_truncated_params(conv_case):
    sym, params = conv_case
    params.write_bytes(params.read_bytes()[:-100])
    with pytest.raises(InvalidModelError, match=f"{params}: truncated or corrupt"):
        convert_checkpoint(sym, params)


def test_symbol_not_json(conv_case):
    sym, params = conv_case
    sym.write_text("this is not json")
    with pytest.raises(InvalidModelError, match="not an MXNet symbol file: invalid JSON"):
        convert_checkpoint(sym, params)


def test_node_referencing_missing_input(conv_case):
    sym, params = conv_case
    doc = json.loads(sym.read_text())
    doc["nodes"][-1]["inputs"][0] = [99, 0, 0]
    sym.write_text(json.dumps(doc))
    with pytest.raises(InvalidModelError, match="fc0' \\(FullyConnected\\) references input node 99"):
        convert_checkpoint(sym, params)


def test_params_missing_a_weight_names_it(conv_case, tmp_path):
    sym, params = conv_case
    contents = read_ndarray_list(params)
    keep = [(n, a) for n, a in zip(contents.names, contents.arrays) if n != "arg:conv0_weight"]
    assert len(keep) == len(contents.arrays) - 1
    _write_params(params, keep)
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(sym, params)
    msg = str(info.value)
    assert "arg:conv0_weight" in msg and "layer 'conv0' (Convolution)" in msg and "\n" not in msg


def test_weight_of_wrong_shape(conv_case):
    sym, params = conv_case
    contents = read_ndarray_list(params)
    arrays = [(n, a.reshape(4, -1) if n == "arg:conv0_weight" else a) for n, a in zip(contents.names, contents.arrays)]
    _write_params(params, arrays)
    with pytest.raises(ConversionError, match=r"conv0.*expected weights of shape \(4, \?, 3, 3\), received \(4, 27\)"):
        convert_checkpoint(sym, params)


def test_unsupported_ops_listed_at_once(conv_case):
    sym, params = conv_case
    doc = json.loads(sym.read_text())
    n = len(doc["nodes"])
    doc["nodes"] += [
        {"op": "WarpCTC", "name": "ctc0", "attr": {}, "inputs": [[n - 1, 0]]},
        {"op": "Custom", "name": "custom0", "attr": {"op_type": "x"}, "inputs": [[n, 0]]},
        {"op": "Custom", "name": "custom1", "attr": {"op_type": "x"}, "inputs": [[n + 1, 0]]},
    ]
    doc["heads"] = [[n + 2, 0, 0]]
    sym.write_text(json.dumps(doc))
    with pytest.raises(UnsupportedOpError) as info:
        convert_checkpoint(sym, params)
    assert info.value.unsupported == {"WarpCTC": ["ctc0"], "Custom": ["custom0", "custom1"]}
    assert "3 unsupported layer(s) of 2 type(s)" in str(info.value)


def test_unknown_input_shape_name(conv_case):
    sym, params = conv_case
    with pytest.raises(InvalidInputError, match="no input named 'image'; inputs: data"):
        convert_checkpoint(sym, params, ConvertOptions(input_shapes={"image": [1, 3, 5, 5]}))


def _write_params(path, named_arrays):
    """Write an nd.save container (V2 records) following the documented layout."""
    import struct

    from portanet.converters.mxnet.params import DTYPES, V2_MAGIC

    flags = {v: k for k, v in DTYPES.items()}
    out = struct.pack("<QQQ", 0x112, 0, len(named_arrays))
    for _n, a in named_arrays:
        out += struct.pack("<Iii", V2_MAGIC, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
        out += struct.pack("<iii", 1, 0, flags[a.dtype]) + a.tobytes()
    out += struct.pack("<Q", len(named_arrays))
    for n, _a in named_arrays:
        out += struct.pack("<Q", len(n.encode())) + n.encode()
    path.write_bytes(out)
