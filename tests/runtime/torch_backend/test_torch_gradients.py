"""Gradients through the torch backend.

* every differentiable op the backend lowers: ``torch.autograd.gradcheck`` compares the
  backward pass with finite differences of the forward (float64, tiny shapes);
* a whole CNN against the equivalent native ``torch.nn`` network: outputs, parameter
  gradients and BatchNorm running statistics (ONNX momentum vs torch momentum).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from portanet.runtime.torch_backend import lower, supported_ops

I64 = np.int64


def X(*shape: int, kind: str = "normal") -> tuple[str, tuple[int, ...]]:
    """A differentiable (float64) graph input of ``shape``; kind picks the value range."""
    return (kind, shape)


def ints(*v: int) -> np.ndarray:
    return np.array(v, dtype=I64)


def i32(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int32)


def f64(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float64)


# (case id, op type, inputs, attributes[, number of node outputs])
CASES: list[tuple] = [
    # activations
    ("Relu", "Relu", [X(3, 4)], {}),
    ("LeakyRelu", "LeakyRelu", [X(3, 4)], {"alpha": 0.2}),
    ("PRelu", "PRelu", [X(2, 3, 4), X(3, 1)], {}),
    ("Elu", "Elu", [X(3, 4)], {"alpha": 0.7}),
    ("Celu", "Celu", [X(3, 4)], {"alpha": 1.3}),
    ("Selu", "Selu", [X(3, 4)], {}),
    ("Sigmoid", "Sigmoid", [X(3, 4)], {}),
    ("HardSigmoid", "HardSigmoid", [X(3, 4)], {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", "HardSwish", [X(3, 4, kind="unit")], {}),
    ("Tanh", "Tanh", [X(3, 4)], {}),
    ("Softplus", "Softplus", [X(3, 4)], {}),
    ("Softsign", "Softsign", [X(3, 4)], {}),
    ("Gelu", "Gelu", [X(3, 4)], {}),
    ("Gelu_tanh", "Gelu", [X(3, 4)], {"approximate": "tanh"}),
    ("Erf", "Erf", [X(3, 4)], {}),
    ("Mish", "Mish", [X(3, 4)], {}),
    ("ThresholdedRelu", "ThresholdedRelu", [X(3, 4)], {"alpha": 0.1}),
    ("Clip", "Clip", [X(3, 4), f64(-0.5), f64(0.6)], {}),
    ("Softmax", "Softmax", [X(2, 3, 4)], {"axis": 1}),
    ("LogSoftmax", "LogSoftmax", [X(2, 3, 4)], {"axis": -1}),
    # element-wise
    ("Add", "Add", [X(2, 3), X(3)], {}),
    ("Sub", "Sub", [X(2, 3), X(2, 1)], {}),
    ("Mul", "Mul", [X(2, 3), X(2, 3)], {}),
    ("Div", "Div", [X(2, 3), X(3, kind="pos")], {}),
    ("Pow", "Pow", [X(2, 3, kind="pos"), X(2, 3)], {}),
    ("Pow_const", "Pow", [X(2, 3), f64(2.0)], {}),
    ("Sqrt", "Sqrt", [X(2, 3, kind="pos")], {}),
    ("Exp", "Exp", [X(2, 3)], {}),
    ("Log", "Log", [X(2, 3, kind="pos")], {}),
    ("Abs", "Abs", [X(2, 3, kind="pos")], {}),
    ("Neg", "Neg", [X(2, 3)], {}),
    ("Reciprocal", "Reciprocal", [X(2, 3, kind="pos")], {}),
    ("Max", "Max", [X(2, 3), X(3), X(2, 3)], {}),
    ("Min", "Min", [X(2, 3), X(2, 3)], {}),
    ("Sum", "Sum", [X(2, 3), X(3), X(2, 3)], {}),
    ("Mean", "Mean", [X(2, 3), X(2, 3)], {}),
    ("Mod_fmod", "Mod", [X(2, 3, kind="big"), f64(0.7)], {"fmod": 1}),
    ("Sin", "Sin", [X(2, 3)], {}),
    ("Cos", "Cos", [X(2, 3)], {}),
    ("Tan", "Tan", [X(2, 3, kind="unit")], {}),
    ("Asin", "Asin", [X(2, 3, kind="unit")], {}),
    ("Acos", "Acos", [X(2, 3, kind="unit")], {}),
    ("Atan", "Atan", [X(2, 3)], {}),
    ("Sinh", "Sinh", [X(2, 3)], {}),
    ("Cosh", "Cosh", [X(2, 3)], {}),
    ("Asinh", "Asinh", [X(2, 3)], {}),
    ("Acosh", "Acosh", [X(2, 3, kind="big")], {}),
    ("Atanh", "Atanh", [X(2, 3, kind="unit")], {}),
    ("Where", "Where", [np.array([[True, False, True]]), X(2, 3), X(2, 3)], {}),
    ("Identity", "Identity", [X(2, 3)], {}),
    ("Cast", "Cast", [X(2, 3)], {"to": TensorProto.DOUBLE}),
    ("CastLike", "CastLike", [X(2, 3), f64(1.0)], {}),
    # linear algebra
    ("Conv", "Conv", [X(1, 2, 5, 5), X(3, 2, 3, 3), X(3)], {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ("Conv_group_dil", "Conv", [X(1, 4, 6, 6), X(4, 2, 2, 2)], {"group": 2, "dilations": [2, 2]}),
    ("Conv_same", "Conv", [X(1, 1, 5), X(2, 1, 3)], {"auto_pad": "SAME_LOWER", "strides": [2]}),
    ("ConvTranspose", "ConvTranspose", [X(1, 2, 3, 3), X(2, 3, 3, 3), X(3)], {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("ConvTranspose_outshape", "ConvTranspose", [X(1, 2, 3), X(2, 1, 3)], {"strides": [2], "output_shape": [8]}),
    ("Gemm", "Gemm", [X(2, 3), X(4, 3), X(4)], {"transB": 1}),
    ("Gemm_general", "Gemm", [X(3, 2), X(3, 4), X(2, 4)], {"transA": 1, "alpha": 0.5, "beta": 2.0}),
    ("MatMul", "MatMul", [X(2, 2, 3), X(3, 4)], {}),
    ("Einsum", "Einsum", [X(2, 3), X(3, 4)], {"equation": "ij,jk->ik"}),
    # normalization
    ("BatchNormalization", "BatchNormalization", [X(2, 3, 2, 2), X(3), X(3), X(3), X(3, kind="pos")], {}),
    ("BatchNormalization_training", "BatchNormalization",
     [X(4, 3, 2), X(3), X(3), X(3), X(3, kind="pos")], {"training_mode": 1}, 3),
    ("InstanceNormalization", "InstanceNormalization", [X(2, 3, 4), X(3), X(3)], {}),
    ("LayerNormalization", "LayerNormalization", [X(2, 3, 4), X(4), X(4)], {}),
    ("LayerNormalization_axis", "LayerNormalization", [X(2, 3, 4), X(3, 4), X(3, 4)], {"axis": 1}),
    ("LRN", "LRN", [X(1, 5, 2, 2)], {"size": 4, "alpha": 0.01, "beta": 0.7, "bias": 1.5}),
    ("Dropout_eval", "Dropout", [X(2, 3)], {}),
    # pooling
    ("MaxPool", "MaxPool", [X(1, 2, 5, 5)], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ("MaxPool_pads", "MaxPool", [X(1, 1, 4, 4)], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]}),
    ("AveragePool", "AveragePool", [X(1, 2, 5, 5)], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("AveragePool_asym_ceil", "AveragePool", [X(1, 1, 5, 5)],
     {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0], "strides": [2, 2], "ceil_mode": 1, "count_include_pad": 1}),
    ("AveragePool_dil", "AveragePool", [X(1, 1, 6)], {"kernel_shape": [2], "dilations": [2]}),
    ("GlobalAveragePool", "GlobalAveragePool", [X(2, 3, 2, 2)], {}),
    ("GlobalMaxPool", "GlobalMaxPool", [X(2, 3, 2, 2)], {}),
    ("LpPool", "LpPool", [X(1, 2, 4, 4, kind="pos")], {"kernel_shape": [2, 2], "p": 3}),
    ("GlobalLpPool", "GlobalLpPool", [X(1, 2, 3, 3, kind="pos")], {"p": 2}),
    # reductions
    ("ReduceMean", "ReduceMean", [X(2, 3, 4), ints(1, -1)], {"keepdims": 0}),
    ("ReduceSum", "ReduceSum", [X(2, 3, 4), ints(0)], {}),
    ("ReduceMax", "ReduceMax", [X(2, 3, 4), ints(2)], {}),
    ("ReduceMin", "ReduceMin", [X(2, 3, 4)], {"keepdims": 0}),
    ("ReduceL2", "ReduceL2", [X(2, 3, 4), ints(1)], {}),
    ("ReduceL1", "ReduceL1", [X(2, 3, kind="pos"), ints(1)], {}),
    ("ReduceProd", "ReduceProd", [X(2, 3, 2), ints(0, 2)], {}),
    ("ReduceLogSum", "ReduceLogSum", [X(2, 3, kind="pos"), ints(1)], {}),
    ("ReduceLogSumExp", "ReduceLogSumExp", [X(2, 3), ints(1)], {}),
    ("ReduceSumSquare", "ReduceSumSquare", [X(2, 3), ints(0)], {}),
    # tensor shape and movement
    ("Concat", "Concat", [X(2, 3), X(2, 2)], {"axis": 1}),
    ("Split", "Split", [X(2, 5)], {"axis": 1, "num_outputs": 2}, 2),
    ("Slice", "Slice", [X(4, 5), ints(1, -1), ints(4, -5), ints(0, 1), ints(2, -2)], {}),
    ("Gather", "Gather", [X(4, 3), ints(3, -1, 0)], {"axis": 0}),
    ("GatherElements", "GatherElements", [X(3, 3), np.array([[0, 2], [1, 0], [2, 2]], dtype=I64)], {"axis": 1}),
    ("Reshape", "Reshape", [X(2, 3, 4), ints(0, -1)], {}),
    ("Flatten", "Flatten", [X(2, 3, 4)], {"axis": 2}),
    ("Transpose", "Transpose", [X(2, 3, 4)], {"perm": [2, 0, 1]}),
    ("Squeeze", "Squeeze", [X(2, 1, 3), ints(1)], {}),
    ("Unsqueeze", "Unsqueeze", [X(2, 3), ints(0, -1)], {}),
    ("Expand", "Expand", [X(3, 1), ints(2, 1, 4)], {}),
    ("Tile", "Tile", [X(2, 3), ints(2, 1)], {}),
    ("Pad_constant", "Pad", [X(2, 3), ints(1, 0, 0, 2), f64(1.5)], {"mode": "constant"}),
    ("Pad_reflect", "Pad", [X(1, 4, 4), ints(0, 2, 1, 0, 1, 2)], {"mode": "reflect"}),
    ("Pad_edge", "Pad", [X(3, 4), ints(2, 1, 0, 3)], {"mode": "edge"}),
    ("Pad_wrap", "Pad", [X(3, 4), ints(1, 2, 1, 0)], {"mode": "wrap"}),
    ("DepthToSpace", "DepthToSpace", [X(1, 8, 2, 2)], {"blocksize": 2, "mode": "CRD"}),
    ("SpaceToDepth", "SpaceToDepth", [X(1, 2, 4, 4)], {"blocksize": 2}),
    ("TopK", "TopK", [X(3, 5), ints(2)], {"axis": 1}, 2),
    ("CumSum", "CumSum", [X(3, 4), ints(1)], {"reverse": 1}),
    ("Trilu", "Trilu", [X(4, 4), ints(1)], {"upper": 0}),
    ("Resize_nearest", "Resize", [X(1, 1, 3, 3), None, f64(1, 1, 2, 1.5)], {"mode": "nearest"}),
    ("Resize_linear", "Resize", [X(1, 2, 3, 3), None, f64(1, 1, 1.7, 2)], {"mode": "linear"}),
    ("Resize_linear_fast", "Resize", [X(1, 2, 3, 3), None, f64(1, 1, 2, 2)], {"mode": "linear"}),
    ("Resize_cubic", "Resize", [X(1, 1, 4, 4), None, None, ints(1, 1, 3, 5)],
     {"mode": "cubic", "coordinate_transformation_mode": "align_corners"}),
    ("Resize_antialias", "Resize", [X(1, 1, 5, 6), None, f64(1, 1, 0.6, 0.5)], {"mode": "cubic", "antialias": 1}),
    ("Upsample", "Upsample", [X(1, 1, 2, 3), f64(1, 1, 2, 2)], {"mode": "linear"}),
    # recurrent: X (T, N, I), W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H), lens, h0/c0 (D, N, H), P (D, 3H)
    ("LSTM_fused_bidir", "LSTM", [X(3, 2, 2), X(2, 8, 2), X(2, 8, 2), X(2, 16), None, X(2, 2, 2), X(2, 2, 2)],
     {"hidden_size": 2, "direction": "bidirectional"}, 3),
    ("LSTM_fused_lens", "LSTM", [X(3, 2, 2), X(1, 8, 2), X(1, 8, 2), X(1, 16), i32(3, 2)],
     {"hidden_size": 2, "direction": "reverse"}, 3),
    ("LSTM_loop_peep_clip", "LSTM",
     [X(3, 2, 2), X(1, 8, 2), X(1, 8, 2), X(1, 16), i32(2, 3), X(1, 2, 2), X(1, 2, 2), X(1, 6)],
     {"hidden_size": 2, "clip": 2.5}, 3),
    ("LSTM_loop_input_forget", "LSTM", [X(3, 2, 2), X(1, 8, 2), X(1, 8, 2)],
     {"hidden_size": 2, "input_forget": 1, "layout": 0}, 3),
    ("GRU_fused_lbr1", "GRU", [X(3, 2, 2), X(2, 6, 2), X(2, 6, 2), X(2, 12), i32(1, 3)],
     {"hidden_size": 2, "linear_before_reset": 1, "direction": "bidirectional"}, 2),
    ("GRU_loop_lbr0", "GRU", [X(2, 3, 2), X(1, 6, 2), X(1, 6, 2), X(1, 12), None, X(2, 1, 2)],
     {"hidden_size": 2, "layout": 1}, 2),
    ("RNN_fused_relu", "RNN", [X(3, 2, 2), X(1, 2, 2), X(1, 2, 2), X(1, 4)], {"hidden_size": 2, "activations": ["Relu"]}),
    ("RNN_loop_affine", "RNN", [X(3, 2, 2), X(2, 2, 2), X(2, 2, 2)],
     {"hidden_size": 2, "direction": "bidirectional", "activations": ["Affine", "Softsign"],
      "activation_alpha": [0.5], "activation_beta": [0.1]}),
    # detection: gather/scatter by index, region pooling (rois are constants)
    ("GatherND", "GatherND", [X(2, 3, 4), np.array([[0, 1], [1, 2]], dtype=I64)], {}),
    ("ScatterND", "ScatterND", [X(4, 3), np.array([[1], [3]], dtype=I64), X(2, 3)], {}),
    ("ScatterElements", "ScatterElements", [X(3, 3), np.array([[1, 0, 2], [0, 2, 1]], dtype=I64), X(2, 3)],
     {"axis": 0}),
    ("OneHot_values", "OneHot", [ints(1, 0, 2), ints(3), X(2)], {}),
    ("RoiAlign", "RoiAlign", [X(1, 2, 6, 6), np.array([[0.3, 0.2, 4.1, 3.7], [1.2, 1.1, 5.3, 5.6]]), ints(0, 0)],
     {"output_height": 2, "output_width": 2, "sampling_ratio": 2}),
    ("MaxRoiPool", "MaxRoiPool", [X(1, 2, 6, 6), np.array([[0, 0, 0, 3, 3], [0, 1, 1, 5, 5]], dtype=np.float64)],
     {"pooled_shape": [2, 2]}),
]

#: ops without a gradient to check: integer/boolean outputs or piecewise-constant functions
NOT_DIFFERENTIABLE = {
    "ArgMax", "ArgMin", "Hardmax", "Shape", "Size", "Constant", "ConstantOfShape", "Range",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN",
    "Floor", "Ceil", "Round", "Sign", "NonZero", "NonMaxSuppression",
}


def _value(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if kind == "pos":
        return rng.uniform(0.5, 2.0, shape)
    if kind == "unit":
        return rng.uniform(-0.8, 0.8, shape)
    if kind == "big":
        return rng.uniform(1.5, 3.0, shape)
    return rng.standard_normal(shape)


def _build(op: str, inputs: list, attrs: dict, n_out: int, rng: np.random.Generator):
    """A one-node float64 model: X(...) entries become graph inputs, arrays initializers."""
    graph_inputs, inits, names, feeds = [], [], [], []
    for i, spec in enumerate(inputs):
        name = f"in{i}"
        if spec is None:
            names.append("")
        elif isinstance(spec, tuple):
            kind, shape = spec
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, shape))
            feeds.append(torch.from_numpy(_value(kind, shape, rng)).requires_grad_(True))
            names.append(name)
        else:
            inits.append(numpy_helper.from_array(spec, name))
            names.append(name)
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph(
        [node], op, graph_inputs, [helper.make_tensor_value_info(outs[0], TensorProto.DOUBLE, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ir.serde.deserialize_model(model), feeds


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradient_matches_finite_differences(case) -> None:
    _, op, inputs, attrs, *rest = case
    rng = np.random.default_rng(len(op) * 7 + len(inputs))
    model, feeds = _build(op, inputs, attrs, rest[0] if rest else 1, rng)
    module = lower(model).eval()
    assert torch.autograd.gradcheck(lambda *xs: module(*xs), tuple(feeds), eps=1e-6, atol=1e-5, rtol=1e-4)


# -- control flow: whole float64 models, the subgraphs reading outer-scope values -------------
def _vi(name: str, elem: int = TensorProto.DOUBLE, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _if_case():
    """y = if sum(x) > 0: then [nested If on sum(w*x) > 0: tanh(x*w) | x*x] else exp(x) * w."""
    inner_t = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Tanh", ["xw"], ["a"])],
                                "it", [], [_vi("a")])
    inner_e = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["b"])], "ie", [], [_vi("b")])
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["p"]), helper.make_node("ReduceSum", ["p"], ["ps"], keepdims=0),
         helper.make_node("Greater", ["ps", "zero"], ["pc"]),
         helper.make_node("If", ["pc"], ["t"], then_branch=inner_t, else_branch=inner_e)],
        "then", [], [_vi("t")],
    )
    else_g = helper.make_graph([helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Mul", ["e", "w"], ["f"])],
                               "else", [], [_vi("f")])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(np.array(0.0), "zero")]
    return nodes, [("x", (2, 3)), ("w", (2, 3))], inits


def _loop_case():
    """4 iterations of h <- tanh(h * w + x) carried, every h scanned out."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["h_in", "w"], ["hw"]), helper.make_node("Add", ["hw", "x"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body", [_vi("i", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("h_in")],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("h_out"), _vi("h_out")],
    )
    nodes = [helper.make_node("Loop", ["M", "", "h0"], ["h", "hs"], body=body),
             helper.make_node("ReduceSumSquare", ["hs"], ["q"], keepdims=0),
             helper.make_node("Add", ["h", "q"], ["y"])]
    inits = [numpy_helper.from_array(np.array(4, dtype=I64), "M")]
    return nodes, [("x", (1, 3)), ("w", (1, 3)), ("h0", (1, 3))], inits


def _scan_case():
    """acc <- acc * w + a_t over the rows of a, read in reverse; every acc scanned out."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["acc_in", "w"], ["m"]), helper.make_node("Add", ["m", "a"], ["acc_out"]),
         helper.make_node("Sin", ["acc_out"], ["o"])],
        "body", [_vi("acc_in"), _vi("a")], [_vi("acc_out"), _vi("o")],
    )
    nodes = [helper.make_node("Scan", ["acc0", "a"], ["acc", "os"], body=body, num_scan_inputs=1,
                              scan_input_directions=[1]),
             helper.make_node("Unsqueeze", ["acc", "ax0"], ["acc2"]),
             helper.make_node("Concat", ["acc2", "os"], ["y"], axis=0)]
    inits = [numpy_helper.from_array(np.array([0], dtype=I64), "ax0")]
    return nodes, [("acc0", (3,)), ("a", (4, 3)), ("w", (3,))], inits


SUBGRAPH_CASES = {"If": _if_case, "Loop": _loop_case, "Scan": _scan_case}


@pytest.mark.parametrize("op", sorted(SUBGRAPH_CASES))
def test_control_flow_gradient_matches_finite_differences(op: str) -> None:
    nodes, inputs, inits = SUBGRAPH_CASES[op]()
    graph = helper.make_graph(nodes, op, [_vi(n, shape=list(sh)) for n, sh in inputs], [_vi("y")], initializer=inits)
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    module = lower(model).eval()
    rng = np.random.default_rng(5)
    for sign in (1.0, -1.0):  # If: both branches (the sign of sum(x) picks one)
        feeds = []
        for name, shape in inputs:
            v = rng.uniform(0.2, 1.0, shape) * (sign if name == "x" else 1.0)
            feeds.append(torch.from_numpy(v).requires_grad_(True))
        assert torch.autograd.gradcheck(lambda *xs: module(*xs), tuple(feeds), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_every_supported_op_is_gradient_checked_or_not_differentiable() -> None:
    checked = {c[1] for c in CASES} | set(SUBGRAPH_CASES)
    missing = set(supported_ops()) - checked - NOT_DIFFERENTIABLE
    assert not missing, sorted(missing)


# -- a CNN against its native torch.nn twin -----------------------------------------------
def _cnn_pair(seed: int = 0):
    """(IR model of the CNN, the equivalent torch.nn.Sequential with the same weights)."""
    torch.manual_seed(seed)
    native = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        # ONNX stores the momentum attribute as float32: 0.8 -> 0.800000011920929
        torch.nn.BatchNorm2d(4, momentum=1.0 - float(np.float32(0.8))),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 5),
        torch.nn.LogSoftmax(dim=1),
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        native[1].running_mean.uniform_(-0.5, 0.5)
        native[1].running_var.uniform_(0.5, 2.0)
    sd = {k: v.detach().numpy().copy() for k, v in native.state_dict().items()}

    def init(name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(sd[name], name)

    nodes = [
        helper.make_node("Conv", ["x", "0.weight", "0.bias"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        # ONNX momentum 0.8 == torch momentum 0.2 (the opposite convention)
        helper.make_node(
            "BatchNormalization", ["c", "1.weight", "1.bias", "1.running_mean", "1.running_var"], ["b"],
            momentum=0.8, epsilon=1e-5,
        ),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "5.weight", "5.bias"], ["g"], transB=1),
        helper.make_node("LogSoftmax", ["g"], ["y"], axis=1),
    ]
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "5.weight", "5.bias"]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], initializer=[init(n) for n in names],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ir.serde.deserialize_model(model), native


def _by_ir_name(module) -> dict[str, torch.Tensor]:
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    return {ir_name: tensors[t] for t, ir_name in module.param_ir_names.items()}


def test_cnn_matches_native_torch_in_train_and_eval() -> None:
    model, native = _cnn_pair()
    module = lower(model)
    ours = _by_ir_name(module)
    assert set(ours) == set(native.state_dict()) - {"1.num_batches_tracked"}
    # BatchNorm running statistics are buffers, everything else trainable parameters
    assert {module.param_ir_names[n] for n, _ in module.named_buffers() if n in module.param_ir_names} == {
        "1.running_mean", "1.running_var"
    }
    rng = np.random.default_rng(1)
    for step in range(3):  # train mode: batch statistics, running stats updated each step
        x = torch.from_numpy(rng.standard_normal((6, 1, 8, 8)))
        target = torch.from_numpy(rng.integers(0, 5, 6))
        module.train(), native.train()
        for m in (module, native):
            m.zero_grad()
            torch.nn.functional.nll_loss(m(x), target).backward()
        native_sd = dict(native.named_parameters())
        for name, t in ours.items():
            if t.requires_grad:
                torch.testing.assert_close(t.grad, native_sd[name].grad, rtol=1e-10, atol=1e-12, msg=f"{name} step {step}")
        torch.testing.assert_close(ours["1.running_mean"], native[1].running_mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ours["1.running_var"], native[1].running_var, rtol=1e-12, atol=1e-14)
    module.eval(), native.eval()
    x = torch.from_numpy(rng.standard_normal((3, 1, 8, 8)))
    with torch.no_grad():
        torch.testing.assert_close(module(x), native(x), rtol=1e-12, atol=1e-12)


def test_dropout_follows_train_and_eval() -> None:
    graph = helper.make_graph(
        [helper.make_node("Dropout", ["x", "ratio"], ["y"])], "d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [200, 50])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(0.3, dtype=np.float32), "ratio")],
    )
    module = lower(ir.serde.deserialize_model(helper.make_model(graph)))
    x = torch.ones(200, 50)
    module.eval()
    assert torch.equal(module(x), x)
    module.train()
    torch.manual_seed(0)
    y = module(x)
    kept = y != 0
    # inverted dropout: kept values scaled by 1 / (1 - p); about p of them dropped
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.02
