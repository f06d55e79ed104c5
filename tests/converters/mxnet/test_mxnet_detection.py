"""MXNet detection ops and the generic ops detector post-processing uses, against mxnet 1.9.1
(model_zoo/mxnet/detection_build.py): each converted case runs on ONNX Runtime and on the torch
backend and matches mxnet's outputs (rtol=1e-4, atol=1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
from mxnet_helpers import load_case

from portanet.converters.mxnet.importer import convert_checkpoint
from portanet.converters.registry import ConvertOptions
from portanet.runtime.session import Session

pytestmark = pytest.mark.mxnet


@pytest.fixture(scope="module")
def det_refs():
    from model_zoo.mxnet import mxnet_python
    from model_zoo.mxnet.detection import build_detection

    if mxnet_python() is None:
        pytest.skip("the mxnet side environment is missing (make mxnet-env creates it)")
    return build_detection()


def _case_names() -> list[str]:
    import ast
    from pathlib import Path

    # the names are the first element of each `yield` in detection_build.cases (no mxnet needed)
    src = (Path(__file__).resolve().parents[3] / "model_zoo" / "mxnet" / "detection_build.py").read_text()
    names = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Yield) and isinstance(node.value, ast.Tuple):
            first = node.value.elts[0]
            if isinstance(first, ast.Constant):
                names.append(first.value)
            elif isinstance(first, ast.JoinedStr):
                names.extend(f"roi_align_{a}_{r}" for a in ("plain", "aligned") for r in (-1, 2))
    return names


@pytest.mark.parametrize("case", _case_names())
def test_detection_op_matches_mxnet(det_refs, case):
    folder, _ = det_refs
    sym, params, feeds, ref = load_case(folder, case)
    # inputs of different batch sizes (boxes vs anchors): keep the batch dims static
    model = convert_checkpoint(sym, params, ConvertOptions(input_shapes={k: list(v.shape) for k, v in feeds.items()},
                                                           dynamic_batch=False))
    for backend in ("ort", "torch"):
        out = Session(model, backend=backend).run(feeds)
        assert set(out) == set(ref), f"{backend}: outputs {sorted(out)} != mxnet's {sorted(ref)}"
        for name, expected in ref.items():
            got = out[name]
            assert got.shape == expected.shape, f"{backend} {name}: shape {got.shape} != mxnet {expected.shape}"
            np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{backend} {case}:{name}")
