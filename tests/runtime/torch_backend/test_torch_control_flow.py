"""If / Loop / Scan on the torch backend against ONNX Runtime, and training through them.

Models are built with onnx.helper: subgraphs reading outer-scope values (graph inputs and
trainable initializers), nested subgraphs, loop-carried state, scan outputs, an LSTM
inside If branches. ONNX Runtime is the reference for outputs; gradients are checked
against finite differences in test_torch_gradients.py and, here, reach parameters that
only subgraphs read.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from portanet.runtime.torch_backend import TorchBackend, lower
from portanet.runtime.torch_backend.ops.control_flow import If
from tests.tolerance import parity_bound

FLOAT = TensorProto.FLOAT


def _vi(name: str, elem: int = FLOAT, shape=None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def if_model() -> tuple[onnx.ModelProto, list[dict]]:
    """y = if sum(x) > 0: (x @ W1) * s  [nested: if s > 1 then +1 else -1]  else: relu(x) @ W2."""
    rng = np.random.default_rng(0)
    inner_then = helper.make_graph([helper.make_node("Add", ["t", "one"], ["it"])], "inner_then", [], [_vi("it")])
    inner_else = helper.make_graph([helper.make_node("Sub", ["t", "one"], ["ie"])], "inner_else", [], [_vi("ie")])
    then_g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["m"]),
            helper.make_node("Mul", ["m", "s"], ["t"]),
            helper.make_node("Greater", ["s", "one"], ["sc"]),
            helper.make_node("If", ["sc"], ["tn"], then_branch=inner_then, else_branch=inner_else),
        ],
        "then", [], [_vi("tn")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["e"])],
        "else", [], [_vi("e")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0),
            helper.make_node("Greater", ["sx", "zero"], ["c"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        "if_model", [_vi("x", FLOAT, ["N", 4]), _vi("s", FLOAT, [])], [_vi("y", FLOAT, ["N", 3])],
        initializer=[
            _init("W1", rng.standard_normal((4, 3)).astype(np.float32)),
            _init("W2", rng.standard_normal((4, 3)).astype(np.float32)),
            _init("zero", np.float32(0.0)), _init("one", np.float32(1.0)),
        ],
    )
    x = rng.standard_normal((5, 4)).astype(np.float32)
    feeds = [
        {"x": np.abs(x), "s": np.array(2.0, dtype=np.float32)},   # then branch, nested then
        {"x": np.abs(x), "s": np.array(0.5, dtype=np.float32)},   # then branch, nested else
        {"x": -np.abs(x[:2]), "s": np.array(2.0, dtype=np.float32)},  # else branch, batch 2
    ]
    return _model(graph), feeds


def lstm_if_model() -> tuple[onnx.ModelProto, list[dict]]:
    """An LSTM in each branch of an If (a voice-activity detector's pattern): the branch is
    picked by the sample rate input; each branch owns its LSTM weights."""
    rng = np.random.default_rng(1)
    T, H, F = 6, 5, 3
    inits = []
    branches = []
    for tag in ("a", "b"):
        inits += [
            _init(f"W_{tag}", rng.uniform(-0.5, 0.5, (1, 4 * H, F)).astype(np.float32)),
            _init(f"R_{tag}", rng.uniform(-0.5, 0.5, (1, 4 * H, H)).astype(np.float32)),
            _init(f"B_{tag}", rng.uniform(-0.5, 0.5, (1, 8 * H)).astype(np.float32)),
        ]
        branches.append(helper.make_graph(
            [
                helper.make_node("LSTM", ["x", f"W_{tag}", f"R_{tag}", f"B_{tag}", "", "h0", "c0"],
                                 [f"Y_{tag}", f"Yh_{tag}", f"Yc_{tag}"], hidden_size=H),
                helper.make_node("Squeeze", [f"Y_{tag}", "ax1"], [f"y_{tag}"]),
            ],
            f"branch_{tag}", [], [_vi(f"y_{tag}"), _vi(f"Yh_{tag}"), _vi(f"Yc_{tag}")],
        ))
    inits += [_init("ax1", np.array([1], dtype=np.int64)), _init("sr16k", np.array(16000, dtype=np.int64))]
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
            helper.make_node("If", ["is16k"], ["y", "hn", "cn"], then_branch=branches[0], else_branch=branches[1]),
        ],
        "vad", [_vi("x", FLOAT, ["T", "N", F]), _vi("sr", TensorProto.INT64, []),
                _vi("h0", FLOAT, [1, "N", H]), _vi("c0", FLOAT, [1, "N", H])],
        [_vi("y"), _vi("hn"), _vi("cn")], initializer=inits,
    )
    feeds = []
    for sr, n, t in ((16000, 1, T), (8000, 3, T), (16000, 2, 2 * T)):
        feeds.append({
            "x": rng.standard_normal((t, n, F)).astype(np.float32), "sr": np.array(sr, dtype=np.int64),
            "h0": rng.standard_normal((1, n, H)).astype(np.float32),
            "c0": rng.standard_normal((1, n, H)).astype(np.float32),
        })
    return _model(graph), feeds


def loop_model() -> tuple[onnx.ModelProto, list[dict]]:
    """A while-loop with a trip limit: h <- tanh(h @ Wr + x) while mean(h) < limit, i < M;
    carries h and a step counter, scans out every h and i*h."""
    rng = np.random.default_rng(2)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "Wr"], ["hw"]),
            helper.make_node("Add", ["hw", "x"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_out"]),
            helper.make_node("Add", ["k_in", "one_i"], ["k_out"]),
            helper.make_node("ReduceMean", ["h_out"], ["mh"], keepdims=0),
            helper.make_node("Less", ["mh", "limit"], ["cond_out"]),
            helper.make_node("Cast", ["i"], ["fi"], to=FLOAT),
            helper.make_node("Mul", ["h_out", "fi"], ["scaled"]),
        ],
        "body",
        [_vi("i", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("h_in"), _vi("k_in", TensorProto.INT64)],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("h_out"), _vi("k_out", TensorProto.INT64), _vi("h_out"),
         _vi("scaled")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "c0", "h0", "k0"], ["h", "k", "hs", "ss"], body=body)],
        "loop_model",
        [_vi("x", FLOAT, ["N", 4]), _vi("h0", FLOAT, ["N", 4]), _vi("M", TensorProto.INT64, []),
         _vi("c0", TensorProto.BOOL, []), _vi("limit", FLOAT, [])],
        [_vi("h"), _vi("k", TensorProto.INT64), _vi("hs"), _vi("ss")],
        initializer=[_init("Wr", rng.uniform(-0.7, 0.7, (4, 4)).astype(np.float32)),
                     _init("k0", np.array(0, dtype=np.int64)), _init("one_i", np.array(1, dtype=np.int64))],
    )
    feeds = []
    for n, m, limit in ((1, 7, 10.0), (3, 20, 0.05), (2, 4, 10.0)):
        feeds.append({
            "x": rng.standard_normal((n, 4)).astype(np.float32), "h0": rng.standard_normal((n, 4)).astype(np.float32),
            "M": np.array(m, dtype=np.int64), "c0": np.array(True), "limit": np.array(limit, dtype=np.float32),
        })
    return _model(graph), feeds


def scan_model() -> tuple[onnx.ModelProto, list[dict]]:
    """A running sum (state) over two scan inputs, one read along axis 1 in reverse; outputs
    stacked along axis 0 and (reversed) along axis 1; the body reads an outer weight."""
    rng = np.random.default_rng(3)
    body = helper.make_graph(
        [
            helper.make_node("Mul", ["a", "Wo"], ["aw"]),
            helper.make_node("Add", ["aw", "b"], ["ab"]),
            helper.make_node("Add", ["acc_in", "ab"], ["acc_out"]),
            helper.make_node("Sigmoid", ["acc_out"], ["sg"]),
        ],
        "scan_body", [_vi("acc_in"), _vi("a"), _vi("b")], [_vi("acc_out"), _vi("sg"), _vi("ab")],
    )
    graph = helper.make_graph(
        [helper.make_node("Scan", ["acc0", "A", "Bt"], ["acc", "S1", "S2"], body=body, num_scan_inputs=2,
                          scan_input_axes=[0, 1], scan_input_directions=[0, 1], scan_output_axes=[0, -1],
                          scan_output_directions=[0, 1])],
        "scan_model", [_vi("acc0", FLOAT, [3]), _vi("A", FLOAT, ["T", 3]), _vi("Bt", FLOAT, [3, "T"])],
        [_vi("acc"), _vi("S1"), _vi("S2")],
        initializer=[_init("Wo", rng.standard_normal(3).astype(np.float32))],
    )
    feeds = []
    for t in (1, 4, 9):
        feeds.append({"acc0": rng.standard_normal(3).astype(np.float32),
                      "A": rng.standard_normal((t, 3)).astype(np.float32),
                      "Bt": rng.standard_normal((3, t)).astype(np.float32)})
    return _model(graph), feeds


MODELS = {"if_nested": if_model, "lstm_in_if": lstm_if_model, "loop": loop_model, "scan": scan_model}



@pytest.mark.parametrize("name", sorted(MODELS))
def test_matches_onnxruntime(name: str) -> None:
    model, feeds_list = MODELS[name]()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    backend = TorchBackend(ir.serde.deserialize_model(model))  # one lowering, several feeds
    for feeds in feeds_list:
        refs = sess.run(None, feeds)
        got = backend.run(feeds)
        for out, ref in zip(sess.get_outputs(), refs):
            g = got[out.name]
            assert g.shape == ref.shape, (out.name, g.shape, ref.shape)
            if ref.dtype.kind == "f":
                assert float(np.abs(g - ref).max(initial=0.0)) <= parity_bound(ref), out.name
            else:
                np.testing.assert_array_equal(g, ref)


def test_constant_condition_is_inlined() -> None:
    """An If whose condition is an initializer leaves no If module and no dead branch."""
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["a"])], "t", [], [_vi("a")])
    else_g = helper.make_graph([helper.make_node("Exp", ["x"], ["b"])], "e", [], [_vi("b")])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
        [_vi("x", FLOAT, [3])], [_vi("y", FLOAT, [3])], initializer=[_init("c", np.array(False))],
    )
    module = lower(ir.serde.deserialize_model(_model(graph)))
    assert not any(isinstance(m, If) for m in module.modules())
    x = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(module(x), torch.exp(x))


@pytest.mark.parametrize("name", ["lstm_in_if", "loop", "scan"])
def test_parameters_read_only_by_subgraphs_train(name: str) -> None:
    """Weights used only inside subgraphs are parameters and get gradients from the
    executed branch / iterations (a weight in the branch not taken gets none)."""
    model, feeds_list = MODELS[name]()
    module = lower(ir.serde.deserialize_model(model))
    params = dict(module.named_parameters())
    ir_names = {module.param_ir_names[n] for n in params}
    expected = {"lstm_in_if": {"W_a", "R_a", "B_a", "W_b", "R_b", "B_b"}, "loop": {"Wr"}, "scan": {"Wo"}}[name]
    assert expected <= ir_names
    feeds = feeds_list[0]
    args = [torch.from_numpy(np.asarray(feeds[n])) for n in module.input_names]
    outs = module(*args)
    loss = sum(o.float().square().sum() for o in outs if o.is_floating_point())
    loss.backward()
    for tname, p in params.items():
        ir_name = module.param_ir_names[tname]
        if name == "lstm_in_if" and ir_name.endswith("_b"):  # feeds[0] takes branch a
            assert p.grad is None, ir_name
        else:
            assert p.grad is not None and float(p.grad.abs().sum()) > 0, ir_name
