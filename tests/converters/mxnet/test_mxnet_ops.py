"""Per-op parity: each small symbol-API net (model_zoo/mxnet/op_cases.py) converted by
portanet and run by ONNX Runtime matches mxnet 1.9.1's own outputs, elementwise at
rtol=1e-4, atol=1e-5, for every graph output, under MXNet's output names."""

from __future__ import annotations

import numpy as np
import pytest
from mxnet_helpers import load_case

from model_zoo.mxnet.op_cases import CASE_NAMES
from portanet.converters.mxnet.importer import convert_checkpoint
from portanet.converters.registry import ConvertOptions
from portanet.ir.provenance import source_of
from portanet.runtime.session import Session


@pytest.mark.mxnet
@pytest.mark.parametrize("case", CASE_NAMES)
def test_op_matches_mxnet(mx_refs, case):
    sym, params, feeds, ref = load_case(mx_refs, case)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    model = convert_checkpoint(sym, params, ConvertOptions(input_shapes=shapes))
    out = Session(model).run(feeds)
    assert set(out) == set(ref), f"outputs {sorted(out)} != mxnet's {sorted(ref)}"
    for name, expected in ref.items():
        got = out[name]
        assert got.shape == expected.shape, f"{name}: shape {got.shape} != mxnet {expected.shape}"
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"{case}:{name}")
    # every IR node carries the MXNet node it came from
    assert all(source_of(node) is not None for node in model.graph)
