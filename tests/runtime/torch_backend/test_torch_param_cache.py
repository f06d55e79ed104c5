"""Parameter-only expressions of a lowered graph are computed once in inference and again
after every parameter change; training recomputes them so gradients reach the parameters.

References: numpy (the matrix product below) and ONNX Runtime on the weights written back
into the IR (the LSTM case) — never the backend's own uncached path.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from portanet.runtime.torch_backend import lower, write_back
from portanet.runtime.torch_backend.param_cache import ParamPrep
from tests.tolerance import parity_bound


def _ort(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = ir.serde.serialize_model(model).SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


def _matmul_model(w: np.ndarray) -> ir.Model:
    # Y = X @ Transpose(W) * 2: the Transpose and the scaling of W read W only
    nodes = [
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("Mul", ["Wt", "two"], ["Wt2"]),
        helper.make_node("MatMul", ["X", "Wt2"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", w.shape[1]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", w.shape[0]])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _prep(module) -> ParamPrep:
    preps = [m for m in module.modules() if isinstance(m, ParamPrep)]
    assert len(preps) == 1
    return preps[0]


def test_weight_expression_cached_until_the_weight_changes() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    module = lower(_matmul_model(w)).eval()
    prep = _prep(module)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        y = module(xt).numpy()
        cached = prep._value
        assert cached is not None
        module(xt)
        assert prep._value is cached  # second call: the cached weights, not a recomputation
    ref = x @ w.T * 2
    assert np.abs(y - ref).max() <= parity_bound(ref)

    # an in-place update (what optimizer.step does) and load_state_dict both refresh it
    (name, param), = module.named_parameters()
    with torch.no_grad():
        param.add_(1.0)
        y = module(xt).numpy()
    ref = x @ (w + 1).T * 2
    assert np.abs(y - ref).max() <= parity_bound(ref)
    w2 = rng.standard_normal((3, 4)).astype(np.float32)
    state = module.state_dict()
    state[name] = torch.from_numpy(w2)
    module.load_state_dict(state)
    with torch.no_grad():
        y = module(xt).numpy()
    ref = x @ w2.T * 2
    assert np.abs(y - ref).max() <= parity_bound(ref)

    # a dtype change (new storage) too
    module.double()
    with torch.no_grad():
        y = module(torch.from_numpy(x.astype(np.float64))).numpy()
    ref = x.astype(np.float64) @ w2.astype(np.float64).T * 2
    assert y.dtype == np.float64 and np.abs(y - ref).max() <= 1e-12


def test_training_recomputes_and_gradients_reach_the_weight() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    module = lower(_matmul_model(w))
    with torch.no_grad():
        module(torch.from_numpy(x))  # fill the cache first
    module.train()
    module(torch.from_numpy(x)).sum().backward()
    (param,) = module.parameters()
    # d sum(X @ W.T * 2) / dW[j, k] = 2 * sum_i X[i, k] for every j
    ref = np.broadcast_to(2 * x.sum(0), w.shape)
    assert param.grad is not None and np.abs(param.grad.numpy() - ref).max() <= parity_bound(ref)
    assert _prep(module)._value is None  # the grad-mode call dropped the cache


def _lstm_model(seed: int = 0) -> tuple[ir.Model, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    t, n, f, h = 6, 3, 4, 5
    inits = [
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (2, 4 * h, f)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (2, 4 * h, h)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.uniform(-0.5, 0.5, (2, 8 * h)).astype(np.float32), "B"),
    ]
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=h, direction="bidirectional")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [t, n, f])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [t, 2, n, h])], inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto), {"X": rng.standard_normal((t, n, f)).astype(np.float32)}


def test_lstm_inference_after_a_training_step_uses_the_new_weights() -> None:
    """The fused LSTM's torch-layout weights are cached in inference; after an SGD step the
    next inference must use the updated W/R/B (reference: ONNX Runtime on the weights
    written back into the IR)."""
    model, feeds = _lstm_model()
    module = lower(model).eval()
    x = torch.from_numpy(feeds["X"])
    with torch.no_grad():
        got = module(x).numpy()
    (ref,) = _ort(model, feeds)
    assert np.abs(got - ref).max() <= parity_bound(ref)

    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    module(x).square().sum().backward()
    assert {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0} \
        == set(module.param_ir_names)
    opt.step()

    module.eval()
    with torch.no_grad():
        got = module(x).numpy()
    trained = write_back(module, copy.deepcopy(model))
    (ref2,) = _ort(trained, feeds)
    assert np.abs(ref2 - ref).max() > 1e-3  # the step did change the outputs
    assert np.abs(got - ref2).max() <= parity_bound(ref2)
