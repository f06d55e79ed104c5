"""PyTorch importer: whole-model parity with eager PyTorch, provenance, files, bad inputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from portanet.cli import cli
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError, PortanetError
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY

torch = pytest.importorskip("torch")

import portanet  # noqa: E402
from model_zoo.pytorch import ZOO, LeNet5, build, save_pt2  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def ort_session(model: ir.Model) -> ort.InferenceSession:
    return ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_parity_batch_1_and_5(torch_zoo, name):
    module, model = torch_zoo(name)
    sess = ort_session(model)
    (inp,) = sess.get_inputs()
    assert inp.shape[0] == "N"  # one conversion serves every batch size
    g = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        x = torch.randn(batch, *ZOO[name].input_shape, generator=g)
        with torch.no_grad():
            ref = module(x).numpy()
        (got,) = sess.run(None, {inp.name: x.numpy()})
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL, err_msg=f"{name} batch {batch}")


@pytest.mark.parametrize("name", sorted(ZOO))
def test_provenance_names_modules(torch_zoo, name):
    module, model = torch_zoo(name)
    paths = {n for n, _ in module.named_modules() if n}
    classes = {n: type(m).__name__ for n, m in module.named_modules() if n}
    nodes = list(model.graph)
    assert all(SOURCE_KEY in n.metadata_props for n in nodes)
    from_modules = [n for n in nodes if n.metadata_props[SOURCE_KEY] in paths]
    # every parametrized module (conv, linear, batchnorm) shows up in the provenance
    with_params = {n for n, m in module.named_modules() if n and list(m.parameters(recurse=False))}
    assert with_params <= {n.metadata_props[SOURCE_KEY] for n in from_modules}
    for n in from_modules:
        assert n.metadata_props[SOURCE_TYPE_KEY] == classes[n.metadata_props[SOURCE_KEY]]
    # no torch bookkeeping (stack traces hold local paths) is left in the IR
    assert not any(k.startswith("pkg.torch") for n in nodes for k in n.metadata_props)


def test_provenance_specific_layers(torch_zoo):
    _, model = torch_zoo("resnet18")
    src = {(n.metadata_props[SOURCE_KEY], n.op_type) for n in model.graph}
    assert ("layer2.0.downsample.0", "Conv") in src
    assert ("layer2.0.downsample.1", "BatchNormalization") in src
    assert ("fc", "Gemm") in src
    types = {n.metadata_props[SOURCE_KEY]: n.metadata_props[SOURCE_TYPE_KEY] for n in model.graph}
    assert types["layer3.1.bn2"] == "BatchNorm2d"
    assert model.opset_imports[""] == 18
    assert model.metadata_props["portanet.source_framework"] == "pytorch"


def test_unet_has_transpose_concat_upsample(torch_zoo):
    _, model = torch_zoo("small_unet")
    ops = {n.op_type for n in model.graph}
    assert {"ConvTranspose", "Concat", "Resize"} <= ops


def test_static_batch_and_training_mode_restored():
    module = build("lenet5").train()
    model = portanet.convert(module, example_inputs=torch.randn(3, 1, 32, 32), dynamic_batch=False)
    assert module.training  # the caller's mode is restored after the eval-mode export
    assert list(model.graph.inputs[0].shape) == [3, 1, 32, 32]


def test_pt2_cli_round_trip(tmp_path):
    pt2 = save_pt2("lenet5")
    out = tmp_path / "lenet.onnx"
    res = CliRunner().invoke(cli, ["convert", str(pt2), "-o", str(out)])  # the documented command, default -O1
    assert res.exit_code == 0, res.output
    model = portanet.load(out)
    assert {n.metadata_props.get(SOURCE_KEY) for n in model.graph} >= {"conv1", "conv2", "fc1", "fc2", "fc3"}
    sess = ort_session(model)
    module = build("lenet5")
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref, rtol=RTOL, atol=ATOL)


def test_state_dict_with_model_class(tmp_path):
    module = build("lenet5")
    path = tmp_path / "lenet.pth"
    torch.save(module.state_dict(), path)
    model = portanet.convert(path, model_class="model_zoo.pytorch:LeNet5", input_shapes={"": [1, 1, 32, 32]})
    sess = ort_session(model)
    x = np.random.default_rng(2).standard_normal((2, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref, rtol=RTOL, atol=ATOL)


def test_torchscript_file(tmp_path):
    module = build("case_study_cnn")
    path = tmp_path / "cnn.pt"
    torch.jit.trace(module, torch.randn(2, 1, 28, 28)).save(str(path))
    model = portanet.convert(path, input_shapes={"": [2, 1, 28, 28]})
    assert [d if isinstance(d, int) else str(d) for d in model.graph.inputs[0].shape] == ["N", 1, 28, 28]
    sess = ort_session(model)
    x = np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------------- bad inputs
def test_pt2_that_is_not_one(tmp_path):
    bad = tmp_path / "fake.pt2"
    bad.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(InvalidModelError, match=r"fake\.pt2: not a torch.export .pt2 archive"):
        portanet.convert(bad)
    res = CliRunner().invoke(cli, ["convert", str(bad), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_state_dict_missing_key(tmp_path):
    state = build("lenet5").state_dict()
    del state["fc2.bias"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(InvalidModelError, match=r"broken\.pth: .*missing key\(s\) fc2\.bias") as info:
        portanet.convert(path, model_class="model_zoo.pytorch:LeNet5", input_shapes={"": [1, 1, 32, 32]})
    assert "\n" not in str(info.value)


def test_state_dict_without_model_class(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build("lenet5").state_dict(), path)
    with pytest.raises(InvalidInputError, match="--model-class"):
        portanet.convert(path, input_shapes={"": [1, 1, 32, 32]})


def test_pickled_model_needs_trust_pickle(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(LeNet5().eval(), path)
    with pytest.raises(ConversionError, match="--trust-pickle"):
        portanet.convert(path, input_shapes={"": [1, 1, 32, 32]})
    res = CliRunner().invoke(cli, ["convert", str(path), "--input-shape", "1x1x32x32", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "--trust-pickle" in res.output
    model = portanet.convert(path, input_shapes={"": [1, 1, 32, 32]}, trust_pickle=True)
    assert sum(n.op_type == "Conv" for n in model.graph) == 2


def test_module_without_example_input():
    with pytest.raises(InvalidInputError, match="example input"):
        portanet.convert(LeNet5())


def test_export_failure_is_located():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x[x > 0].sum() if x.sum() > 0 else x  # data-dependent control flow

    with pytest.raises(PortanetError, match=r"^DataDependent: torch.onnx export failed: .*data-dependent") as info:
        portanet.convert(DataDependent(), example_inputs=torch.randn(2, 3))
    assert "\n" not in str(info.value)


def test_every_unsupported_op_listed_at_once():
    class Exotic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)

        def forward(self, x):
            y = self.proj(x)
            return torch.linalg.svdvals(y).sum() + torch.special.zeta(x, x).sum()

    from portanet.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError) as info:
        portanet.convert(Exotic(), example_inputs=torch.randn(2, 3, 3))
    assert set(info.value.unsupported) == {"aten._linalg_svd.default", "prims.zeta.default"}
    assert "2 unsupported layer(s) of 2 type(s)" in str(info.value)
