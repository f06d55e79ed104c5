"""Train through the torch backend, write the weights back, save ONNX, run it in ONNX Runtime.

ONNX Runtime (an independent implementation) is the reference for the exported model; it
must equal the trained torch module in eval mode. The saved model is then loaded again,
trained again and exported again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from portanet.errors import InvalidInputError, UnsupportedOpError
from portanet.ir.builder import BATCH, GraphBuilder
from portanet.ir.io import load_onnx, save_onnx
from portanet.runtime import Session
from portanet.runtime.torch_backend import lower, source_layer_of_param, write_back


def small_cnn(seed: int = 0) -> ir.Model:
    """conv-bn-relu-pool-dropout-gemm on (N, 1, 12, 12), made with the importers' builder."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    b = GraphBuilder("test", name="small_cnn")
    x = b.add_input("data", [BATCH, 1, 12, 12])
    with b.layer("conv1", "Convolution"):
        y = b.op("Conv", [x, b.initializer("conv1_w", w(6, 1, 3, 3)), b.initializer("conv1_b", w(6))],
                 {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    with b.layer("bn1", "BatchNorm"):
        y = b.op("BatchNormalization", [
            y, b.initializer("bn1_scale", 1 + w(6)), b.initializer("bn1_bias", w(6)),
            b.initializer("bn1_mean", w(6)), b.initializer("bn1_var", 1 + np.abs(w(6))),
        ], {"momentum": 0.9, "epsilon": 1e-5})
    with b.layer("relu1", "ReLU"):
        y = b.op("Relu", [y])
    with b.layer("pool1", "Pooling"):
        y = b.op("MaxPool", [y], {"kernel_shape": [2, 2], "strides": [2, 2]})
    with b.layer("drop1", "Dropout"):
        y = b.op("Dropout", [y, b.const(np.array(0.25, np.float32), name="ratio")])
    with b.layer("fc", "InnerProduct"):
        # (N, 6, 6, 6) -> (N, 216) -> (N, 10)
        y = b.op("Flatten", [y], {"axis": 1})
        y = b.op("Gemm", [y, b.initializer("fc_w", w(10, 216, scale=0.1)), b.initializer("fc_b", w(10))],
                 {"transB": 1})
    b.add_output(y, "logits")
    return b.build()


def _train(module, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    module.train()
    for _ in range(steps):
        x = torch.from_numpy(rng.standard_normal((16, 1, 12, 12)).astype(np.float32))
        y = torch.from_numpy(rng.integers(0, 10, 16))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        opt.step()


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"data": x})[0]


def test_train_write_back_export_and_train_again(tmp_path: Path) -> None:
    model = small_cnn()
    before = {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}
    module = lower(model)
    _train(module, steps=4, seed=1)
    module.eval()
    probe = np.random.default_rng(2).standard_normal((5, 1, 12, 12)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(probe)).numpy()

    write_back(module, model)
    changed = [n for n in before if not np.array_equal(before[n], model.graph.initializers[n].const_value.numpy())]
    # every weight and both running statistics moved; the constant dropout ratio did not
    assert set(changed) == set(before) - {"ratio"}
    first = save_onnx(model, tmp_path / "trained.onnx")
    np.testing.assert_allclose(_ort(first, probe), expected, rtol=1e-4, atol=1e-5)

    # convert the exported model again, train it again, export again
    again = load_onnx(first)
    module2 = lower(again).eval()
    with torch.no_grad():
        np.testing.assert_allclose(module2(torch.from_numpy(probe)).numpy(), expected, rtol=1e-4, atol=1e-5)
    _train(module2, steps=3, seed=3)
    module2.eval()
    with torch.no_grad():
        expected2 = module2(torch.from_numpy(probe)).numpy()
    assert not np.allclose(expected2, expected)
    second = save_onnx(write_back(module2, again), tmp_path / "trained2.onnx")
    np.testing.assert_allclose(_ort(second, probe), expected2, rtol=1e-4, atol=1e-5)


def test_session_torch_matches_ort() -> None:
    model = small_cnn(seed=4)
    feeds = {"data": np.random.default_rng(5).standard_normal((3, 1, 12, 12)).astype(np.float32)}
    got = Session(model, backend="torch").run(feeds)
    want = Session(model, backend="ort").run(feeds)
    assert list(got) == ["logits"]
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-5)


def test_parameter_names_and_provenance() -> None:
    model = small_cnn()
    module = lower(model)
    params = {module.param_ir_names[n] for n, _ in module.named_parameters()}
    buffers = {module.param_ir_names[n] for n, _ in module.named_buffers() if n in module.param_ir_names}
    assert params == {"conv1_w", "conv1_b", "bn1_scale", "bn1_bias", "fc_w", "fc_b"}
    assert buffers == {"bn1_mean", "bn1_var"}
    assert module.input_names == ["data"] and module.output_names == ["logits"]
    assert source_layer_of_param(model, "fc_w") == "fc"
    assert source_layer_of_param(model, "bn1_var") == "bn1"
    assert source_layer_of_param(model, "missing") is None


def test_unsupported_ops_are_listed_together() -> None:
    b = GraphBuilder("test")
    x = b.add_input("x", [BATCH, 4])
    y = b.op("Relu", [x])
    y = b.op("LabelEncoder", [y], name="enc", domain="ai.onnx.ml")
    y = b.op("Det", [y], name="det1")
    y = b.op("Det", [y], name="det2")
    b.add_output(y, "y")
    with pytest.raises(UnsupportedOpError) as err:
        lower(b.build(infer=False))
    assert err.value.unsupported == {"ai.onnx.ml::LabelEncoder": ["enc"], "Det": ["det1", "det2"]}
    assert "\n" not in str(err.value)


def test_write_back_rejects_a_different_model() -> None:
    module = lower(small_cnn())
    other = GraphBuilder("test")
    x = other.add_input("x", [BATCH, 2])
    other.add_output(other.op("Relu", [x]), "y")
    with pytest.raises(InvalidInputError, match="no initializer"):
        write_back(module, other.build())


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    model = small_cnn()
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((2, 1, 12, 12)).astype(np.float32))
    cpu = lower(model).eval()
    gpu = lower(model, device="cuda").eval()
    with torch.no_grad():
        np.testing.assert_allclose(gpu(x.cuda()).cpu().numpy(), cpu(x).numpy(), rtol=1e-4, atol=1e-5)
    _train(gpu.cpu().cuda(), steps=1, seed=0)


def test_session_rejects_unknown_output_names() -> None:
    from portanet.errors import RuntimeBackendError

    session = Session(small_cnn(), backend="torch")
    with pytest.raises(RuntimeBackendError, match="unknown output"):
        session.run(session.random_feeds(batch=1), output_names=["conv1"])
