"""verify with PyTorch sources: parity of zoo models, bisection of a corrupted layer, repro,
gradient parity, certificate, exit statuses."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import portanet
from portanet.cli import cli
from portanet.ir.metadata import CERTIFICATE_KEY

torch = pytest.importorskip("torch")

from model_zoo.pytorch import ZOO, build, save_pt2  # noqa: E402


@pytest.fixture(scope="session")
def resnet18(parity_tmp):
    """ResNet-18 as .pt2 and its conversion saved as ONNX (converted once)."""
    pt2 = save_pt2("resnet18")
    onnx_path = parity_tmp / "resnet18.onnx"
    portanet.save(portanet.convert(pt2), onnx_path)
    return pt2, onnx_path


@pytest.mark.parametrize("name", ["case_study_cnn", "small_unet"])
def test_verify_passes_on_zoo_modules(name):
    module = build(name)
    report = portanet.verify(module, example_inputs=torch.randn(1, *ZOO[name].input_shape))
    assert report.passed, report.summary()
    assert report.backends == ["ort", "torch"]
    # both batch sizes, every backend, every output
    assert {(r.backend, r.inputs.split()[-1]) for r in report.results} == {
        (b, "x".join(map(str, (n, *ZOO[name].input_shape)))) for b in ("ort", "torch") for n in (1, 2)
    }
    assert all(r.stats.max_abs <= 1e-4 for r in report.results)


def test_verify_cli_pt2_writes_certificate_and_json(resnet18, tmp_path):
    pt2, onnx_path = resnet18
    out, rep = tmp_path / "certified.onnx", tmp_path / "report.json"
    res = CliRunner().invoke(cli, ["verify", str(pt2), "--onnx", str(onnx_path), "--shapes", "1x3x64x64,3x3x64x64",
                                   "--json", str(rep), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "parity OK" in res.output
    data = json.loads(rep.read_text())
    assert data["passed"] and data["inputs"]["shapes"] == [{"x": [1, 3, 64, 64]}, {"x": [3, 3, 64, 64]}]
    cert = json.loads(portanet.load(out).metadata_props[CERTIFICATE_KEY])
    assert cert["passed"] and cert["framework"] == "pytorch"
    assert cert["sources"][0]["file"] == pt2.name and len(cert["sources"][0]["sha256"]) == 64
    assert cert["inputs"]["seed"] == 0 and "torch" in cert["tools"]
    assert cert["outputs"]["ort"]["x 3x3x64x64"]["linear"]["max_abs"] < 1e-5
    shown = CliRunner().invoke(cli, ["inspect", str(out), "--json"])
    assert json.loads(shown.output)["metadata"][CERTIFICATE_KEY]["passed"] is True
    shown = CliRunner().invoke(cli, ["inspect", str(out)], terminal_width=200)
    assert "parity certificate: passed against pytorch on ort, torch, 2 input set(s)" in shown.output


def test_corrupted_layer_fails_and_bisect_names_it(resnet18, tmp_path, corrupt):
    pt2, onnx_path = resnet18
    model = portanet.load(onnx_path)
    corrupt(model, "layer2.0.conv1")
    bad = tmp_path / "bad.onnx"
    portanet.save(model, bad)
    repro = tmp_path / "repro"
    res = CliRunner().invoke(cli, ["verify", str(pt2), "--onnx", str(bad), "--backends", "ort", "--bisect",
                                   "--repro-dir", str(repro), "--shapes", "2x3x64x64", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 3, res.output
    assert "first divergent layer: layer2.0.conv1 (Conv2d)" in res.output
    assert "Traceback" not in res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bisect"]["layer"] == "layer2.0.conv1"
    # BasicBlock.forward computes the shortcut first, so it precedes conv1 in the graph
    assert report["bisect"]["last_good"] == "layer2.0.downsample.1"
    assert report["bisect"]["nodes"][0]["op"] == "Conv"
    assert report["bisect"]["nodes"][0]["attributes"]["strides"] == [2, 2]
    assert CERTIFICATE_KEY not in portanet.load(bad).metadata_props  # a failure certifies nothing

    # the repro reproduces the divergence: its output is far from the source layer's output ...
    sess = ort.InferenceSession(str(repro / "repro.onnx"), providers=["CPUExecutionProvider"])
    with np.load(repro / "repro_inputs.npz") as z:
        feeds = dict(z)
    with np.load(repro / "repro_expected.npz") as z:
        (expected,) = z.values()
    (got,) = sess.run(None, feeds)
    assert got.shape == expected.shape == (2, 128, 8, 8)
    assert np.abs(got - expected).max() > 1e-2
    # ... which an independent eager run of the source module confirms is the true layer output
    module = build("resnet18")
    captured = {}

    def hook(_m, _i, out):
        captured["y"] = out.detach().numpy()

    module.layer2[0].conv1.register_forward_hook(hook)
    with torch.no_grad():
        module(torch.from_numpy(feeds["x"]))
    np.testing.assert_allclose(expected, captured["y"], rtol=1e-5, atol=1e-6)
    # and the repro model is a prefix: nothing after the divergent layer
    assert len(portanet.load(repro / "repro.onnx").graph) < len(portanet.load(bad).graph) / 2


def test_gradient_parity_case_study_cnn():
    module = build("case_study_cnn")
    report = portanet.verify(module, example_inputs=torch.randn(4, 1, 28, 28), train=True, shapes=["4x1x28x28"])
    g = report.gradients
    assert report.passed, report.summary()
    # every trainable parameter (4 conv/linear layers x weight and bias, plus 1 more conv) is compared
    assert len(g.params) == len(list(module.parameters())) == 10 and not g.unmatched
    assert g.loss_stats.passed


def test_tampered_gradient_fails():
    module = build("case_study_cnn")
    # double one parameter's gradient in the source: the forward pass is unchanged
    module.features[3].weight.register_hook(lambda grad: grad * 2.0)
    report = portanet.verify(module, example_inputs=torch.randn(4, 1, 28, 28), train=True, shapes=["4x1x28x28"],
                             backends=["ort"])
    assert all(r.stats.passed for r in report.results)
    assert not report.passed
    failed = [k for k, (_, s) in report.gradients.params.items() if not s.passed]
    assert failed == ["features.3.weight"]
    assert report.gradients.worst(1)[0][0] == "features.3.weight"
    with pytest.raises(portanet.errors.ParityError, match="1 parameter gradient"):
        report.raise_on_failure()


def test_state_dict_verify_through_cli(tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(build("lenet5").state_dict(), path)
    res = CliRunner().invoke(cli, ["verify", str(path), "--model-class", "model_zoo.pytorch:LeNet5",
                                   "--input-shape", "1x1x32x32", "--backends", "ort"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes", "1x3x64x-4"], "bad shape"),
        (["--shapes", "1x4x64x64"], "dimension 1 fixed at 3"),
        (["--backends", "tpu"], "unknown backend"),
        (["--input", "x=missing.npy"], "missing.npy: no such file"),
    ],
)
def test_bad_input_exit_2(resnet18, args, message):
    pt2, onnx_path = resnet18
    res = CliRunner().invoke(cli, ["verify", str(pt2), "--onnx", str(onnx_path), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_not_an_onnx_file_exit_2(tmp_path):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"garbage")
    res = CliRunner().invoke(cli, ["verify", str(save_pt2("lenet5")), "--onnx", str(bad)])
    assert res.exit_code == 2 and "x.onnx" in res.output


def test_convert_verify_certifies_state_dict(tmp_path):
    """`convert --verify` reads the conversion options (model class, input shape) back from
    the converted model to run the source the same way."""
    path = tmp_path / "lenet.pth"
    torch.save(build("lenet5").state_dict(), path)
    out = tmp_path / "lenet.onnx"
    res = CliRunner().invoke(cli, ["convert", str(path), "--model-class", "model_zoo.pytorch:LeNet5",
                                   "--input-shape", "1x1x32x32", "-O", "0", "--verify", "-o", str(out)])
    assert res.exit_code == 0, res.output
    cert = json.loads(portanet.load(out).metadata_props[CERTIFICATE_KEY])
    assert cert["passed"] and cert["sources"][0]["file"] == "lenet.pth"
