"""The mxnet reference runner (real mxnet 1.9.1 through a subprocess) and the naming
contract: graph outputs and ``<layer>_output`` IR values are the names mxnet reports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from mxnet_helpers import load_case

from portanet.converters.mxnet.importer import convert_checkpoint
from portanet.parity.runners.mxnet import run_reference
from portanet.runtime.session import Session

pytestmark = pytest.mark.mxnet


def test_runner_outputs_and_intermediate_layers(mx_refs):
    sym, params, feeds, ref = load_case(mx_refs, "legacy_v09_attr")  # conv0 -> bn0 -> relu0 -> fc0
    got = run_reference([sym, params], feeds, layers=["bn0", "relu0"])
    assert set(got) == {"fc0_output", "bn0", "relu0"}
    np.testing.assert_array_equal(got["fc0_output"], ref["fc0_output"])  # same mxnet, same numbers
    # the IR value named '<layer>_output' is that layer's output
    model = convert_checkpoint(sym, params)
    values = {v.name: v for node in model.graph for v in node.outputs}
    for layer in ("bn0", "relu0"):
        model.graph.outputs.append(values[f"{layer}_output"])
    out = Session(model).run(feeds)
    for layer in ("bn0", "relu0"):
        np.testing.assert_allclose(out[f"{layer}_output"], got[layer], rtol=1e-4, atol=1e-5)


def test_runner_multi_output_layer_names(mx_refs):
    sym, params, feeds, ref = load_case(mx_refs, "split")
    got = run_reference([sym], feeds)  # params found beside the symbol
    assert sorted(got) == ["split_output0", "split_output1", "split_output2"]
    for k in got:
        np.testing.assert_array_equal(got[k], ref[k])


def test_converts_without_mxnet_importable(mx_refs):
    """The importer never imports mxnet: conversion works with 'import mxnet' made to fail."""
    sym, params, _feeds, _ref = load_case(mx_refs, "legacy_v08_json")
    code = (
        "import sys; sys.modules['mxnet'] = None\n"
        "from portanet.converters.registry import convert_paths\n"
        f"m = convert_paths([{str(sym)!r}])\n"
        "print(sorted(n.op_type for n in m.graph))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(mx_refs))
    assert proc.returncode == 0, proc.stderr
    assert "BatchNormalization" in proc.stdout and "Gemm" in proc.stdout
