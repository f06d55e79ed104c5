"""Parity of CNTK models written by model_zoo.cntk against their PyTorch twins.

Each zoo model's weights come from PyTorch (a module or the arrays fed to the PyTorch
function), so PyTorch is the reference for every op the importer lowers.
"""

from __future__ import annotations

import numpy as np
import pytest

from model_zoo.cntk.nets import CASES, NETS, ZooModel, build
from portanet.converters.registry import convert_paths
from portanet.ir.provenance import source_of
from portanet.runtime.session import Session

torch = pytest.importorskip("torch")


def _run_both(m: ZooModel, batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, object]:
    x = np.random.default_rng(seed).standard_normal((batch, *m.input_shape)).astype(np.float32)
    if m.positive:
        x = np.abs(x) + 0.1
    model = convert_paths([m.path])
    s = Session(model)
    got = next(iter(s.run({s.inputs[0].name: x}).values()))
    ref = m.torch_forward(torch.from_numpy(x)).numpy()
    return got, ref, model


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_op_matches_pytorch(name: str, cntk_zoo_dir):
    m = build(name, directory=cntk_zoo_dir)
    got, ref, _ = _run_both(m)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def convnet(cntk_zoo_dir) -> ZooModel:
    return build("convnet", directory=cntk_zoo_dir)


def test_convnet_matches_pytorch(convnet: ZooModel):
    got, ref, model = _run_both(convnet, batch=3)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the graph output keeps the CNTK function's name; inputs keep the CNTK input's name
    assert [v.name for v in model.graph.outputs] == ["probs"]
    assert [v.name for v in model.graph.inputs] == ["features"]
    assert str(model.graph.inputs[0].shape[0]) == "N"
    # stride-2 auto-padded 3x3 conv on 16x16: CNTK pads (1, 0), not ONNX SAME_UPPER's (0, 1)
    first_conv = next(n for n in model.graph if n.op_type == "Conv")
    assert list(first_conv.attributes["pads"].value) == [1, 1, 0, 0]
    # every node has provenance to a CNTK function uid and its op type
    assert all(source_of(n) is not None for n in model.graph)
    assert {"Convolution", "Splice", "BatchNormalization", "Pooling", "Times", "Softmax"} <= {
        source_of(n)[1] for n in model.graph}


def test_large_file_layout_converts_identically(convnet: ZooModel, cntk_zoo_dir):
    large = build("convnet", large=True, directory=cntk_zoo_dir)
    head = large.path.read_bytes()[:4]
    assert int.from_bytes(head, "little") == 0x636E746B
    got, ref, _ = _run_both(large)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    normal = convert_paths([convnet.path])
    big = convert_paths([large.path])
    a = {v.name: v.const_value.numpy() for v in normal.graph.initializers.values()}
    b = {v.name: v.const_value.numpy() for v in big.graph.initializers.values()}
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_every_zoo_model_is_listed():
    assert set(NETS) == {"convnet"}
    assert len(CASES) >= 50


def test_convnet_on_the_torch_backend(convnet: ZooModel):
    """The converted CNTK model also runs on the training backend (torch.fx), same numbers."""
    x = np.random.default_rng(3).standard_normal((2, *convnet.input_shape)).astype(np.float32)
    s = Session(convert_paths([convnet.path]), backend="torch")
    got = s.run({"features": x})["probs"]
    ref = convnet.torch_forward(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
