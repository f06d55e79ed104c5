"""Symbol JSON reader: every node-attribute spelling, old entry/heads layouts, string-typed
attributes, BatchNorm without moving-stat inputs, and malformed files."""

from __future__ import annotations

import json

import pytest

from portanet.converters.mxnet.symbol import Attrs, parse_symbol
from portanet.errors import ConversionError, InvalidModelError


def _doc(nodes, heads, **extra):
    return json.dumps({"nodes": nodes, "arg_nodes": [], "heads": heads, **extra})


def test_attribute_spellings_merge_param_attr_attrs():
    nodes = [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "Pooling", "name": "p08", "param": {"kernel": "(2,2)", "pool_type": "max"},
         "attr": {"ctx_group": "dev1", "lr_mult": "2"}, "inputs": [[0, 0]], "backward_source_id": -1},
        {"op": "Pooling", "name": "p09", "attr": {"kernel": "(3, 3)", "pool_type": "avg"}, "inputs": [[1, 0]]},
        {"op": "Pooling", "name": "p10", "attrs": {"kernel": "[1, 1]", "global_pool": "True"}, "inputs": [[2, 0, 0]]},
    ]
    sym = parse_symbol(_doc(nodes, [[3, 0]]))
    p08, p09, p10 = sym.nodes[1:]
    assert dict(p08.attrs) == {"kernel": "(2,2)", "pool_type": "max"}  # hidden keys dropped
    assert p09.attrs.tuple("kernel") == (3, 3) and p09.attrs.str("pool_type") == "avg"
    assert p10.attrs.tuple("kernel") == (1, 1) and p10.attrs.bool("global_pool") is True
    assert p10.inputs == [(2, 0)]
    assert sym.version is None  # no node_row_ptr, no attrs: a 0.8 file
    assert sym.heads == [(3, 0)]


def test_string_typed_attributes():
    a = Attrs({"k": "(3, 3)", "k2": "(3,3)", "e": "[]", "t": "True", "f": "0", "one": "1", "n": "None",
               "x": "1e-05", "i": "4", "s": "'max'", "nested": "(None, 2, -1)"})
    assert a.tuple("k") == (3, 3) and a.tuple("k2") == (3, 3)
    assert a.tuple("e", (1, 1)) == (1, 1)  # empty means default
    assert a.bool("t") and not a.bool("f") and a.bool("one")
    assert a.int("n", 7) == 7 and a.float("x") == 1e-5 and a.int("i") == 4
    assert a.str("s") == "max" and a.tuple("nested") == (None, 2, -1)
    assert a.bool("absent", True) is True
    with pytest.raises(ConversionError, match="attribute 'missing' is required"):
        a.int("missing")
    with pytest.raises(ConversionError, match="True/False"):
        Attrs({"b": "maybe"}).bool("b")


def test_batchnorm_without_moving_stats_gets_them_synthesised():
    nodes = [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "null", "name": "bn0_gamma", "inputs": []},
        {"op": "null", "name": "bn0_beta", "inputs": []},
        {"op": "BatchNorm", "name": "bn0", "param": {"eps": "0.001"}, "inputs": [[0, 0], [1, 0], [2, 0]]},
    ]
    sym = parse_symbol(_doc(nodes, [[3, 0]]))
    bn = sym.nodes[3]
    assert [sym.nodes[i].name for i, _ in bn.inputs] == ["data", "bn0_gamma", "bn0_beta", "bn0_moving_mean",
                                                         "bn0_moving_var"]


def test_multiple_heads_and_version():
    nodes = [{"op": "null", "name": "data", "inputs": []},
             {"op": "SliceChannel", "name": "s", "attrs": {"num_outputs": "2"}, "inputs": [[0, 0, 0]]}]
    sym = parse_symbol(_doc(nodes, [[1, 0, 0], [1, 1, 0]], node_row_ptr=[0, 1, 3],
                            attrs={"mxnet_version": ["int", 10901]}))
    assert sym.heads == [(1, 0), (1, 1)] and sym.version == 10901


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps([1, 2]), "'nodes' list"),
        (json.dumps({"nodes": []}), "no nodes"),
        (_doc([{"op": "null", "name": "data", "inputs": []},
               {"op": "relu", "name": "r", "inputs": [[5, 0, 0]]}], [[1, 0]]),
         "node 'r' \\(relu\\) references input node 5, which does not exist"),
        (_doc([{"op": "relu", "name": "r", "inputs": [[1, 0, 0]]},
               {"op": "null", "name": "data", "inputs": []}], [[0, 0]]), "before it is defined"),
        (_doc([{"op": "null", "name": "data", "inputs": []}], [[3, 0]]), "graph output references node 3"),
        (_doc([{"op": "relu", "name": "r", "inputs": [["a", 0]]}], [[0, 0]]), "expected an entry"),
    ],
)
def test_malformed_symbol(text, message):
    with pytest.raises(InvalidModelError, match=message):
        parse_symbol(text, "bad-symbol.json")
