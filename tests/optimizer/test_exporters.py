"""Real exporter output: small PyTorch modules through ``torch.onnx.export`` and Keras models
through tf2onnx (``from_function``), optimized at -O2 under the guard.

References are the source frameworks themselves (PyTorch / Keras outputs, default parity
tolerance rtol=1e-4, atol=1e-5) and ONNX Runtime on the exported graph (rtol=1e-5). The node
count is compared with onnxsim on the same file.
"""

from __future__ import annotations

import hashlib
import inspect
import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import portanet
from portanet.optimizer import optimize_with_report
from tests.optimizer.helpers import RTOL, ops, ort_run

torch = pytest.importorskip("torch")
nn = torch.nn

PARITY_RTOL, PARITY_ATOL = 1e-4, 1e-5


def source_key(obj) -> str:
    """A short hash of the file defining ``obj``: cached exports are rebuilt when it changes."""
    path = inspect.getsourcefile(obj)
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:10]


class BnMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 5))

    def forward(self, x):
        return self.net(x)


class ResPadNet(nn.Module):
    """Conv-BN-ReLU, residual add, explicit F.pad before a conv, ConvTranspose+BN, x.view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3)
        self.up, self.b3 = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16 * 16, 6)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(h + self.b2(self.c2(h)))
        h = self.c3(nn.functional.pad(h, (1, 1, 1, 1))) * 0.5 + 1.0
        h = torch.sigmoid(self.b3(self.up(nn.functional.max_pool2d(h, 2))))
        return self.fc(h.view(h.size(0), -1))


def _randomize_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
            c = mod.num_features
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.2)
    return m.eval()


def _torch_cases() -> dict:
    cases = {"bn_mlp": (BnMlp, (12,)), "res_pad_net": (ResPadNet, (3, 16, 16))}
    try:
        from model_zoo.pytorch.models import ZOO

        cases.update({name: (ZOO[name].factory, ZOO[name].input_shape) for name in ("case_study_cnn", "lenet5")
                      if name in ZOO})
    except ImportError:  # the zoo is optional for these tests
        pass
    return cases


TORCH_CASES = _torch_cases()


@pytest.fixture(scope="session")
def torch_exports(zoo_cache):
    """name -> (onnx path, torch output on x, x); exported once into the model cache."""
    out = {}
    folder = zoo_cache / "optimizer"
    folder.mkdir(exist_ok=True)
    for name, (factory, shape) in TORCH_CASES.items():
        torch.manual_seed(0)
        module = _randomize_bn(factory())
        x = torch.randn(3, *shape)
        path = folder / f"torch-{name}-{source_key(factory)}.onnx"
        if not path.exists():
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            torch.onnx.export(module, (x,), str(tmp), input_names=["x"], output_names=["y"], opset_version=18,
                              dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False)
            os.replace(tmp, path)
        with torch.no_grad():
            out[name] = (path, module(x).numpy(), x.numpy())
    return out


def _onnxsim_nodes(path) -> int | None:
    try:
        import onnxsim
    except ImportError:
        return None
    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    return len(simplified.graph.node) if ok else None


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_torch_export_optimized(torch_exports, name):
    path, expected, x = torch_exports[name]
    original = onnx.load(str(path))
    result = optimize_with_report(portanet.load(path), level=2, check=True)
    model = result.model
    got = ort_run(model, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    np.testing.assert_allclose(got, ort_run(original, {"x": x})[0], rtol=RTOL, atol=1e-5)
    assert not {"BatchNormalization", "Dropout", "Identity", "Shape", "Constant"} & set(ops(model))
    assert model.graph.inputs[0].shape[0].value == "N"
    sim = _onnxsim_nodes(path)
    if sim is not None:
        assert result.after.nodes <= sim, f"portanet -O2 {result.after.nodes} nodes, onnxsim {sim}"


def test_level1_keeps_training_semantics(torch_exports):
    path, expected, x = torch_exports["res_pad_net"]
    proto = onnx.load(str(path))
    bns = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    params = sorted((t.name, tuple(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    model = portanet.optimize(portanet.load(path), level=1, check=True)
    assert bns >= 1 and ops(model)["BatchNormalization"] == bns
    # level 1 neither creates nor removes a trainable parameter (float initializer)
    kept = sorted((v.name, tuple(v.const_value.shape)) for v in model.graph.initializers.values()
                  if v.const_value.dtype == ir.DataType.FLOAT)
    assert kept == params
    np.testing.assert_allclose(ort_run(model, {"x": x})[0], expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)


# -- tf2onnx -------------------------------------------------------------------------------------
def _keras_cases():
    keras = pytest.importorskip("keras")
    layers = keras.layers

    def nhwc_mix(seed: int = 0):
        keras.utils.set_random_seed(seed)
        inp = keras.Input((16, 16, 3))
        x = layers.Conv2D(8, 3, padding="same")(inp)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        y = layers.Conv2D(8, 3, padding="same")(x)
        x = layers.Add()([x, y])
        x = layers.MaxPooling2D()(x)
        x = layers.DepthwiseConv2D(3, padding="same")(x)
        x = layers.Activation("sigmoid")(x)
        x = layers.Flatten()(x)
        x = layers.Dense(10)(x)
        return keras.Model(inp, x)

    cases = {"nhwc_mix": (nhwc_mix, (16, 16, 3))}
    try:
        from model_zoo.keras.models import case_study_cnn

        cases["case_study_cnn"] = (case_study_cnn, (28, 28, 1))
    except ImportError:
        pass
    return cases


@pytest.fixture(scope="session")
def tf_exports(zoo_cache):
    pytest.importorskip("tf2onnx")
    import tensorflow as tf
    import tf2onnx

    out = {}
    for name, (build, shape) in _keras_cases().items():
        model = build(0)
        x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
        spec = [tf.TensorSpec([None, *shape], tf.float32, name="x")]
        path = zoo_cache / "optimizer" / f"tf2onnx-{name}-{source_key(build)}.onnx"
        path.parent.mkdir(exist_ok=True)
        if not path.exists():
            fn = tf.function(lambda t, m=model: m(t, training=False), input_signature=spec)
            proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=18)
            tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
            onnx.save(proto, str(tmp))
            os.replace(tmp, path)
        out[name] = (path, np.asarray(model(x, training=False)), x)
    return out


@pytest.mark.parametrize("name", ["nhwc_mix", "case_study_cnn"])
def test_tf2onnx_export_optimized(tf_exports, name):
    if name not in tf_exports:
        pytest.skip(f"keras zoo model {name} not available")
    path, expected, x = tf_exports[name]
    original = onnx.load(str(path))
    in_name = original.graph.input[0].name
    result = optimize_with_report(portanet.load(path), level=2, check=True)
    model = result.model
    got = ort_run(model, {in_name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_ATOL)
    np.testing.assert_allclose(got, ort_run(original, {in_name: x})[0], rtol=RTOL, atol=1e-5)
    # the only Transposes an exact rewrite cannot remove sit on the NHWC interface
    for node in model.graph:
        if node.op_type == "Transpose":
            assert node.inputs[0].is_graph_input() or node.outputs[0].is_graph_output(), node.name
    sim = _onnxsim_nodes(path)
    if sim is not None:
        assert result.after.nodes <= sim, f"portanet -O2 {result.after.nodes} nodes, onnxsim {sim}"
