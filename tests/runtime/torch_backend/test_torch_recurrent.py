"""ONNX LSTM / GRU / RNN on the torch backend against ONNX Runtime's CPU kernels.

ONNX's own node cases (test_torch_conformance.py) cover only a few attribute combinations;
here every attribute of the three ops is exercised (directions, layout, sequence_lens,
initial states, peepholes, activations with alpha/beta, clip, input_forget,
linear_before_reset) with ONNX Runtime as the independent reference. Both execution paths
of the backend (torch's fused kernels and the exact step loop) are covered: which one a
case takes is asserted too.
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
from portanet.runtime.torch_backend.ops.recurrent import Recurrent
from tests.tolerance import parity_bound

T, N, F, H = 5, 3, 4, 6  # steps, batch, input features, hidden units
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op: str, attrs: dict, *, bias=True, lens=None, h0=False, c0=False, peep=False, layout=0,
           n_out=None, seed=0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    d = 2 if attrs.get("direction") == "bidirectional" else 1
    g = GATES[op]
    x_shape = (N, T, F) if layout else (T, N, F)
    s_shape = (N, d, H) if layout else (d, N, H)
    inits = [
        numpy_helper.from_array(rng.uniform(-0.6, 0.6, (d, g * H, F)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.uniform(-0.6, 0.6, (d, g * H, H)).astype(np.float32), "R"),
    ]
    names = ["X", "W", "R"]
    feeds = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if bias:
        inits.append(numpy_helper.from_array(rng.uniform(-0.5, 0.5, (d, 2 * g * H)).astype(np.float32), "B"))
    names.append("B" if bias else "")
    if lens is not None:
        feeds["L"] = np.array(lens, dtype=np.int32)
        graph_inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [N]))
    names.append("L" if lens is not None else "")
    for flag, name in ((h0, "H0"), (c0, "C0")):
        if op != "LSTM" and name == "C0":
            break
        if flag:
            feeds[name] = rng.standard_normal(s_shape).astype(np.float32)
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, s_shape))
        names.append(name if flag else "")
    if op == "LSTM":
        if peep:
            inits.append(numpy_helper.from_array(rng.uniform(-0.5, 0.5, (d, 3 * H)).astype(np.float32), "P"))
        names.append("P" if peep else "")
    while names and names[-1] == "":
        names.pop()
    n_out = n_out or (3 if op == "LSTM" else 2)
    outs = ["Y", "Y_h", "Y_c"][:n_out]
    node = helper.make_node(op, names, outs, hidden_size=H, layout=layout, **attrs)
    graph = helper.make_graph(
        [node], op, graph_inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), feeds


# (id, op, attributes, options, expected path)
CASES = [
    ("lstm_fwd", "LSTM", {}, {}, "fused"),
    ("lstm_bidir_states", "LSTM", {"direction": "bidirectional"}, {"h0": True, "c0": True}, "fused"),
    ("lstm_reverse_nobias", "LSTM", {"direction": "reverse"}, {"bias": False}, "fused"),
    ("lstm_layout1_bidir", "LSTM", {"direction": "bidirectional"}, {"layout": 1, "h0": True, "c0": True}, "fused"),
    ("lstm_lens_bidir", "LSTM", {"direction": "bidirectional"}, {"lens": [5, 2, 4], "h0": True}, "fused"),
    ("lstm_lens_reverse", "LSTM", {"direction": "reverse"}, {"lens": [3, 5, 1]}, "fused"),
    ("lstm_lens_full", "LSTM", {}, {"lens": [5, 5, 5]}, "fused"),
    ("lstm_peepholes_bidir", "LSTM", {"direction": "bidirectional"}, {"peep": True, "lens": [4, 5, 2]}, "loop"),
    ("lstm_clip", "LSTM", {"clip": 0.7}, {"h0": True, "c0": True}, "loop"),
    ("lstm_input_forget", "LSTM", {"input_forget": 1}, {"peep": True}, "loop"),
    ("lstm_activations", "LSTM",
     {"activations": ["HardSigmoid", "LeakyRelu", "ScaledTanh"], "activation_alpha": [0.3, 0.05, 1.5],
      "activation_beta": [0.4, 0.8]}, {}, "loop"),
    ("lstm_activations_bidir", "LSTM",
     {"direction": "bidirectional",
      "activations": ["Sigmoid", "Tanh", "Softsign", "HardSigmoid", "Elu", "Affine"],
      "activation_alpha": [0.25, 0.9, 0.5], "activation_beta": [0.45, 0.1]}, {"lens": [2, 5, 3]}, "loop"),
    ("lstm_layout1_loop", "LSTM", {"direction": "reverse", "clip": 2.0}, {"layout": 1, "lens": [1, 4, 5]}, "loop"),
    ("gru_lbr1", "GRU", {"linear_before_reset": 1}, {"h0": True}, "fused"),
    ("gru_lbr1_bidir_lens", "GRU", {"linear_before_reset": 1, "direction": "bidirectional"},
     {"lens": [3, 5, 2]}, "fused"),
    ("gru_lbr1_reverse_layout1", "GRU", {"linear_before_reset": 1, "direction": "reverse"},
     {"layout": 1, "h0": True}, "fused"),
    ("gru_lbr0", "GRU", {}, {"h0": True}, "loop"),
    ("gru_lbr0_bidir_lens", "GRU", {"direction": "bidirectional"}, {"lens": [5, 1, 3]}, "loop"),
    ("gru_clip_acts", "GRU", {"clip": 0.9, "activations": ["HardSigmoid", "Softplus"], "activation_alpha": [0.3]},
     {}, "loop"),
    ("gru_lbr1_thresholded", "GRU", {"linear_before_reset": 1, "activations": ["Sigmoid", "ThresholdedRelu"],
                                     "activation_alpha": [0.1]}, {}, "loop"),
    ("rnn_tanh", "RNN", {}, {"h0": True}, "fused"),
    ("rnn_relu_bidir_lens", "RNN", {"direction": "bidirectional", "activations": ["Relu", "Relu"]},
     {"lens": [4, 2, 5]}, "fused"),
    ("rnn_reverse_layout1", "RNN", {"direction": "reverse"}, {"layout": 1}, "fused"),
    ("rnn_mixed_acts", "RNN", {"direction": "bidirectional", "activations": ["Tanh", "Relu"]}, {}, "loop"),
    ("rnn_affine_clip", "RNN", {"activations": ["Affine"], "activation_alpha": [0.5], "activation_beta": [0.2],
                                "clip": 1.0}, {}, "loop"),
]



def _ort_reference(op: str, attrs: dict, opts: dict, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime's outputs. ORT's CPU kernels refuse layout=1 (batch-first): for those
    cases ORT runs the layout-0 twin (same weights) on transposed inputs, and its outputs
    are transposed back."""
    layout = opts.get("layout", 0)
    model, _ = _model(op, attrs, **{**opts, "layout": 0})
    if layout:
        feeds = {k: (v.swapaxes(0, 1) if k != "L" else v) for k, v in feeds.items()}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    refs = sess.run(None, feeds)
    if layout:
        # Y (T, D, N, H) -> (N, T, D, H); Y_h, Y_c (D, N, H) -> (N, D, H)
        refs = [refs[0].transpose(2, 0, 1, 3)] + [r.swapaxes(0, 1) for r in refs[1:]]
    return refs


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_onnxruntime(case) -> None:
    _, op, attrs, opts, path = case
    model, feeds = _model(op, attrs, **opts)
    refs = _ort_reference(op, attrs, opts, feeds)
    backend = TorchBackend(ir.serde.deserialize_model(model))
    mods = [m for m in backend.module.modules() if isinstance(m, Recurrent)]
    assert len(mods) == 1 and mods[0].fusable == (path == "fused")
    got = backend.run(feeds)
    for name, ref in zip(["Y", "Y_h", "Y_c"], refs):
        assert got[name].shape == ref.shape, name
        err = float(np.abs(got[name] - ref).max())
        assert err <= parity_bound(ref), f"{name}: max error {err:.3g} > {parity_bound(ref):.3g}"


def test_weights_are_trainable_parameters_and_receive_gradients() -> None:
    model, feeds = _model("LSTM", {"direction": "bidirectional"}, peep=True)
    module = lower(ir.serde.deserialize_model(model))
    names = set(module.param_ir_names.values())
    assert names == {"W", "R", "B", "P"}
    y = module(torch.from_numpy(feeds["X"]))[0]
    y.square().sum().backward()
    for p in module.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_only_hidden_state_output() -> None:
    """A node with the Y output omitted ("" name) and only Y_h consumed."""
    model, feeds = _model("GRU", {"linear_before_reset": 1}, n_out=2)
    model.graph.node[0].output[0] = ""
    del model.graph.output[0]
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = TorchBackend(ir.serde.deserialize_model(model)).run(feeds)["Y_h"]
    assert np.abs(got - ref).max() <= parity_bound(ref)
