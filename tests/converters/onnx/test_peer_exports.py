"""`inspect` and `run` on ONNX files made by other tools: torch.onnx (dynamo) and tf2onnx.
The reference is the source framework's own output on the same input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from portanet.cli import cli


def _run_cli(model, x_name, x, tmp_path):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    r = CliRunner().invoke(cli, ["run", str(model), "--input", f"{x_name}={tmp_path / 'x.npy'}", "-o", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    info = json.loads(CliRunner().invoke(cli, ["inspect", str(model), "--json"]).output)
    with np.load(out) as z:
        return info, {k: z[k] for k in z.files}


def test_torch_onnx_export(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "torch.onnx"
    torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    info, outs = _run_cli(path, "x", x.numpy(), tmp_path)
    assert "Conv" in info["ops"]
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(next(iter(outs.values())), ref, rtol=1e-4, atol=1e-5)


def test_tf2onnx_export(tmp_path):
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="img")])
    def f(img):
        k = tf.constant(kernel)  # created inside: a graph constant, not a captured input
        y = tf.nn.relu(tf.nn.conv2d(img, k, strides=1, padding="SAME"))
        return tf.reduce_mean(y, axis=[1, 2])

    path = tmp_path / "tf.onnx"
    tf2onnx.convert.from_function(f, input_signature=f.input_signature, opset=15, output_path=str(path))
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    assert info_input_names(path) == ["img"]
    info, outs = _run_cli(path, "img", x, tmp_path)
    assert info["opset"] == 15
    np.testing.assert_allclose(next(iter(outs.values())), f(tf.constant(x)).numpy(), rtol=1e-4, atol=1e-5)


def info_input_names(path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(path)).graph.input]
