"""Bisection internals: chunked walk (bounded memory), early stop, layer points, prefix model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import portanet
from portanet.cli import cli
from portanet.parity import bisect, layer_points, prefix_model
from portanet.parity.runners.pytorch import run_module

torch = pytest.importorskip("torch")

from model_zoo.pytorch import build, save_pt2  # noqa: E402


@pytest.fixture(scope="module")
def resnet_parts():
    module = build("resnet18")
    model = portanet.convert(module, example_inputs=torch.randn(1, 3, 64, 64))
    return module, model


def test_layer_points_follow_module_paths(resnet_parts):
    _, model = resnet_parts
    points = layer_points(model, hierarchical=True)
    names = [p.layer for p in points]
    # leaves in forward order; a block's output is its last ReLU, reported under the ReLU's path
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert "layer1.0" not in names and "layer1.0.relu" in names
    assert names.index("layer2.0.downsample.1") < names.index("layer2.0.conv1")
    assert len(names) == len(set(names))


def test_walk_is_chunked_and_stops_at_the_divergent_chunk(resnet_parts, corrupt):
    module, model = resnet_parts
    import onnx_ir as ir

    copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))  # the fixture model is shared
    corrupt(copy, "layer3.0.conv2")
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    requests: list[list[str]] = []

    def reference(layers):
        requests.append(list(layers))
        return run_module(module, feeds, layers=layers, output_names=["linear"])

    result = bisect(copy, reference, feeds, backend="ort", rtol=1e-4, atol=1e-5, chunk=4, hierarchical=True)
    assert result.layer == "layer3.0.conv2"
    assert all(len(r) <= 4 for r in requests)  # never more than one chunk of intermediates per side
    walked = [name for r in requests for name in r]
    points = [p.layer for p in layer_points(copy, hierarchical=True)]
    assert walked == points[: len(walked)]  # topological order, no repeats
    assert len(walked) < len(points)  # stopped at the divergent chunk
    assert "layer3.0.conv2" in requests[-1]


def test_prefix_model_ends_at_the_layer(resnet_parts):
    module, model = resnet_parts
    point = next(p for p in layer_points(model, hierarchical=True) if p.layer == "layer1.1.relu")
    sub = prefix_model(model, point.value.name)
    assert [v.name for v in sub.graph.outputs] == [point.value.name]
    assert not any(n.metadata_props.get("portanet.source", "").startswith("layer2") for n in sub.graph)
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    sess = ort.InferenceSession(_bytes(sub), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x})
    ref = run_module(module, {"x": x}, layers=["layer1.1.relu"], output_names=["linear"])["layer1.1.relu"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def _bytes(model):
    import onnx_ir as ir

    return ir.serde.serialize_model(model).SerializeToString()


def test_given_inputs_through_cli(tmp_path):
    x = np.random.default_rng(5).standard_normal((3, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    rep = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["verify", str(save_pt2("lenet5")), "--input", f"x={tmp_path / 'x.npy'}",
                                   "--backends", "ort", "--json", str(rep)])
    assert res.exit_code == 0, res.output
    import json

    data = json.loads(rep.read_text())
    assert data["inputs"] == {"kind": "given", "shapes": [{"x": [3, 1, 32, 32]}]}


def test_folded_layers_are_not_reported_as_divergent(resnet_parts):
    """-O2 folds BatchNorm into Conv: the Conv's value is the BatchNorm's output, which must
    not be compared with the source Conv (a false divergence)."""
    module, model = resnet_parts
    optimized = portanet.optimize(ir_copy(model), level=2)
    assert not any(n.op_type == "BatchNormalization" for n in optimized.graph)
    report = portanet.verify(module, onnx=optimized, bisect=True, backends=["ort"], shapes=["2x3x64x64"])
    assert report.passed, report.summary()
    assert report.bisect.compared > 0 and not report.bisect.found
    assert all(not p.layer.endswith(("conv1", "conv2", "bn1", "bn2")) for p in layer_points(optimized, hierarchical=True))


def ir_copy(model):
    import onnx_ir as ir

    return ir.serde.deserialize_model(ir.serde.serialize_model(model))
