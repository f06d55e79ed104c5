"""Every pass: graphs where it must fire and graphs where it must not, outputs equal before
and after (ONNX Runtime on the original graph is the reference), idempotent, symbolic batch kept."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from portanet.optimizer import optimize
from tests.optimizer.helpers import check_pass, init, make, ops, rand, tensor_input

N = "N"
node = helper.make_node


# -- constant folding --------------------------------------------------------------------------
def test_constant_folding_folds_constant_arithmetic_and_lifts_constants():
    proto = make(
        [
            node("Constant", [], ["two"], value=helper.make_tensor("t", TensorProto.FLOAT, [4], [2, 2, 2, 2])),
            node("Add", ["c", "two"], ["c2"]),
            node("Mul", ["x", "c2"], ["y"]),
        ],
        [tensor_input("x", [N, 4])], [("y", [N, 4])], [init("c", rand(4))],
    )
    model = check_pass(proto, ["constant_folding", "remove_unused"], fires=True)
    assert ops(model) == {"Mul": 1}


def test_constant_folding_shape_chain_on_static_dims():
    # x.view(x.size(0), x.size(1) * x.size(2)): only the batch entry stays dynamic
    proto = make(
        [
            node("Shape", ["x"], ["s"]),
            node("Gather", ["s", "i1"], ["d1"], axis=0),
            node("Gather", ["s", "i2"], ["d2"], axis=0),
            node("Mul", ["d1", "d2"], ["d12"]),
            node("Gather", ["s", "i0"], ["d0"], axis=0),
            node("Unsqueeze", ["d0", "ax"], ["u0"]),
            node("Unsqueeze", ["d12", "ax"], ["u1"]),
            node("Concat", ["u0", "u1"], ["shape"], axis=0),
            node("Reshape", ["x", "shape"], ["y"]),
        ],
        [tensor_input("x", [N, 3, 5])], [("y", [N, 15])],
        [init("i0", np.array(0, np.int64)), init("i1", np.array(1, np.int64)), init("i2", np.array(2, np.int64)),
         init("ax", np.array([0], np.int64))],
    )
    model = check_pass(proto, ["constant_folding", "collapse_reshapes", "remove_unused"], fires=True)
    assert ops(model) == {"Reshape": 1}


def test_constant_folding_keeps_symbolic_batch_shape_dynamic():
    proto = make(
        [node("Shape", ["x"], ["s"]), node("Gather", ["s", "i0"], ["d0"], axis=0),
         node("Cast", ["d0"], ["f"], to=TensorProto.FLOAT), node("Mul", ["x", "f"], ["y"])],
        [tensor_input("x", [N, 3])], [("y", [N, 3])], [init("i0", np.array(0, np.int64))],
    )
    model = check_pass(proto, ["constant_folding"], fires=False)
    assert ops(model)["Shape"] == 1


def test_constant_folding_level1_keeps_parameters():
    # W * 2 must stay: W is a trainable parameter at level 1; level 2 folds it
    nodes = [node("Mul", ["w", "two"], ["w2"]), node("MatMul", ["x", "w2"], ["y"])]
    inits = [init("w", rand(3, 4)), init("two", np.array(2.0, np.float32))]
    proto = make(nodes, [tensor_input("x", [N, 3])], [("y", [N, 4])], inits)
    check_pass(proto, ["constant_folding"], fires=False, level=1)
    model = check_pass(proto, ["constant_folding", "remove_unused"], fires=True, level=2)
    assert ops(model) == {"MatMul": 1}


# -- identity / dropout / no-op elimination -------------------------------------------------
def test_identity_dropout_and_noops_removed_at_level2():
    proto = make(
        [
            node("Identity", ["x"], ["a"]),
            node("Dropout", ["a", "ratio"], ["b"]),
            node("Cast", ["b"], ["c"], to=TensorProto.FLOAT),
            node("Mul", ["c", "ones"], ["d"]),
            node("Transpose", ["d"], ["e"], perm=[0, 1]),
            node("Relu", ["e"], ["y"]),
        ],
        [tensor_input("x", [N, 4])], [("y", [N, 4])],
        [init("ratio", np.array(0.5, np.float32)), init("ones", np.ones(4, np.float32))],
    )
    model = check_pass(proto, ["eliminate_identity"], fires=True, level=2)
    assert ops(model) == {"Relu": 1}


def test_level1_keeps_dropout_and_parameter_ones():
    proto = make(
        [node("Dropout", ["x", "ratio"], ["b"]), node("Mul", ["b", "gamma"], ["y"])],
        [tensor_input("x", [N, 4])], [("y", [N, 4])],
        [init("ratio", np.array(0.5, np.float32)), init("gamma", np.ones(4, np.float32))],
    )
    model = check_pass(proto, ["eliminate_identity"], fires=False, level=1)
    assert ops(model) == {"Dropout": 1, "Mul": 1}


def test_broadcasting_mul_by_one_is_not_removed():
    # (N, 1) * ones(1, 4) -> (N, 4): the ones change the shape
    proto = make([node("Mul", ["x", "ones"], ["y"])], [tensor_input("x", [N, 1])], [("y", [N, 4])],
                 [init("ones", np.ones((1, 4), np.float32))])
    check_pass(proto, ["eliminate_identity"], fires=False)


def test_identity_graph_input_to_output_is_kept():
    proto = make([node("Identity", ["x"], ["y"])], [tensor_input("x", [N, 4])], [("y", [N, 4])])
    check_pass(proto, ["eliminate_identity"], fires=False)


# -- unused removal, CSE, initializer de-duplication ----------------------------------------
def test_remove_unused_nodes_initializers_inputs():
    proto = make(
        [node("Relu", ["x"], ["y"]), node("Sigmoid", ["x"], ["dead"]), node("Add", ["dead", "w"], ["dead2"])],
        [tensor_input("x", [N, 4]), tensor_input("unused", [N, 2])], [("y", [N, 4])], [init("w", rand(4))],
    )
    model = check_pass(proto, ["remove_unused"], fires=True, level=2,
                       feeds=[{"x": rand(2, 4), "unused": rand(2, 2)}])
    assert ops(model) == {"Relu": 1} and not model.graph.initializers
    assert [v.name for v in model.graph.inputs] == ["x"]


def test_remove_unused_level1_keeps_the_interface():
    proto = make([node("Relu", ["x"], ["y"])], [tensor_input("x", [N, 4]), tensor_input("unused", [N, 2])],
                 [("y", [N, 4])])
    model = check_pass(proto, ["remove_unused"], fires=False, level=1,
                       feeds=[{"x": rand(2, 4), "unused": rand(2, 2)}])
    assert len(model.graph.inputs) == 2


def test_cse_merges_identical_nodes_only():
    proto = make(
        [node("Relu", ["x"], ["a"]), node("Relu", ["x"], ["b"]), node("Sigmoid", ["x"], ["c"]),
         node("Add", ["a", "b"], ["ab"]), node("Add", ["ab", "c"], ["y"])],
        [tensor_input("x", [N, 4])], [("y", [N, 4])],
    )
    model = check_pass(proto, ["cse", "remove_unused"], fires=True)
    assert ops(model) == {"Relu": 1, "Sigmoid": 1, "Add": 2}
    distinct = make([node("Relu", ["x"], ["a"]), node("Sigmoid", ["x"], ["b"]), node("Add", ["a", "b"], ["y"])],
                    [tensor_input("x", [N, 4])], [("y", [N, 4])])
    check_pass(distinct, ["cse"], fires=False)


@pytest.mark.parametrize("level,fires", [(1, False), (2, True)])
def test_dedup_float_initializers_only_at_level2(level, fires):
    proto = make([node("Add", ["x", "b1"], ["a"]), node("Add", ["a", "b2"], ["y"])],
                 [tensor_input("x", [N, 4])], [("y", [N, 4])], [init("b1", rand(4)), init("b2", rand(4))])
    model = check_pass(proto, ["dedup_initializers"], fires=fires, level=level)
    assert len(model.graph.initializers) == (1 if fires else 2)


def test_dedup_integer_initializers_at_level1():
    proto = make([node("Reshape", ["x", "s1"], ["a"]), node("Relu", ["a"], ["b"]), node("Reshape", ["b", "s2"], ["y"])],
                 [tensor_input("x", [N, 2, 3])], [("y", [N, 6])],
                 [init("s1", np.array([0, 6], np.int64)), init("s2", np.array([0, 6], np.int64))])
    model = check_pass(proto, ["dedup_initializers"], fires=True, level=1)
    assert len(model.graph.initializers) == 1


def test_different_initializers_are_not_merged():
    proto = make([node("Add", ["x", "b1"], ["a"]), node("Add", ["a", "b2"], ["y"])],
                 [tensor_input("x", [N, 4])], [("y", [N, 4])], [init("b1", rand(4)), init("b2", rand(4, seed=1))])
    check_pass(proto, ["dedup_initializers"], fires=False)


# -- BatchNormalization folding -------------------------------------------------------------
def _bn(c: int, seed: int = 3) -> list:
    return [init("s", rand(c, seed=seed, positive=True)), init("bb", rand(c, seed=seed + 1)),
            init("mean", rand(c, seed=seed + 2)), init("var", rand(c, seed=seed + 3, positive=True))]


BN = node("BatchNormalization", ["h", "s", "bb", "mean", "var"], ["y"], epsilon=1e-3)


@pytest.mark.parametrize("case", ["conv", "conv_nobias", "convtranspose_group", "gemm_transB", "matmul"])
def test_fold_batchnorm_fires(case):
    x4 = tensor_input("x", [N, 4, 6, 6])
    if case == "conv":
        nodes, inputs, out, inits = [node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1])], [x4], [N, 6, 6, 6], \
            [init("w", rand(6, 4, 3, 3)), init("b", rand(6))]
    elif case == "conv_nobias":
        nodes, inputs, out, inits = [node("Conv", ["x", "w"], ["h"])], [x4], [N, 6, 4, 4], [init("w", rand(6, 4, 3, 3))]
    elif case == "convtranspose_group":
        nodes, inputs, out, inits = [node("ConvTranspose", ["x", "w", "b"], ["h"], group=2, strides=[2, 2])], [x4], \
            [N, 6, 13, 13], [init("w", rand(4, 3, 3, 3)), init("b", rand(6))]
    elif case == "gemm_transB":
        nodes, inputs, out, inits = [node("Gemm", ["x", "w", "b"], ["h"], transB=1, alpha=0.5, beta=2.0)], \
            [tensor_input("x", [N, 5])], [N, 6], [init("w", rand(6, 5)), init("b", rand(6))]
    else:
        nodes, inputs, out, inits = [node("MatMul", ["x", "w"], ["h"])], [tensor_input("x", [N, 5])], [N, 6], \
            [init("w", rand(5, 6))]
    proto = make([*nodes, BN], inputs, [("y", out)], inits + _bn(6))
    model = check_pass(proto, None, fires=True)
    assert "BatchNormalization" not in ops(model)


def test_fold_batchnorm_not_when_conv_output_has_two_consumers():
    proto = make([node("Conv", ["x", "w"], ["h"]), BN, node("Relu", ["h"], ["z"])],
                 [tensor_input("x", [N, 4, 5, 5])], [("y", [N, 6, 3, 3]), ("z", [N, 6, 3, 3])],
                 [init("w", rand(6, 4, 3, 3))] + _bn(6))
    model = check_pass(proto, ["fold_batchnorm"], fires=False)
    assert ops(model)["BatchNormalization"] == 1


def test_fold_batchnorm_not_with_runtime_statistics_or_at_level1():
    proto = make([node("Conv", ["x", "w"], ["h"]), node("BatchNormalization", ["h", "s", "bb", "mean", "v"], ["y"])],
                 [tensor_input("x", [N, 4, 5, 5]), tensor_input("v", [6])], [("y", [N, 6, 3, 3])],
                 [init("w", rand(6, 4, 3, 3))] + _bn(6)[:3])
    feeds = [{"x": rand(2, 4, 5, 5), "v": rand(6, positive=True)}]
    check_pass(proto, ["fold_batchnorm"], fires=False, feeds=feeds)
    proto1 = make([node("Conv", ["x", "w"], ["h"]), BN], [tensor_input("x", [N, 4, 5, 5])], [("y", [N, 6, 3, 3])],
                  [init("w", rand(6, 4, 3, 3))] + _bn(6))
    model = check_pass(proto1, None, fires=False, level=1)  # level 1 keeps the model trainable
    assert ops(model)["BatchNormalization"] == 1


# -- constant Mul/Add folded into Conv/Gemm ------------------------------------------------------
@pytest.mark.parametrize("op,const_shape", [("Mul", (1, 6, 1, 1)), ("Add", (6, 1, 1)), ("Sub", ()),
                                            ("Div", (1, 6, 1, 1))])
def test_fold_affine_into_conv(op, const_shape):
    c = rand(*const_shape, seed=7, positive=True) if const_shape else np.array(0.3, np.float32)
    proto = make([node("Conv", ["x", "w", "b"], ["h"]), node(op, ["h", "c"], ["y"])],
                 [tensor_input("x", [N, 4, 5, 5])], [("y", [N, 6, 3, 3])],
                 [init("w", rand(6, 4, 3, 3)), init("b", rand(6)), init("c", c)])
    model = check_pass(proto, ["fold_affine", "remove_unused"], fires=True)
    assert ops(model) == {"Conv": 1}


def test_fold_affine_into_gemm_and_matmul_scale():
    proto = make([node("Gemm", ["x", "w"], ["h"]), node("Mul", ["c", "h"], ["a"]),
                  node("MatMul", ["a", "w2"], ["m"]), node("Mul", ["m", "c2"], ["y"])],
                 [tensor_input("x", [N, 5])], [("y", [N, 3])],
                 [init("w", rand(5, 6)), init("c", rand(6, seed=2)), init("w2", rand(6, 3)), init("c2", rand(1, 3))])
    model = check_pass(proto, ["fold_affine", "remove_unused"], fires=True)
    assert ops(model) == {"Gemm": 1, "MatMul": 1}


@pytest.mark.parametrize("case", ["spatial_const", "two_consumers", "sub_from_const"])
def test_fold_affine_must_not_fire(case):
    outs = [("y", [N, 6, 3, 3])]
    nodes = [node("Conv", ["x", "w"], ["h"])]
    c = rand(1, 1, 3, 3, seed=5)
    if case == "spatial_const":
        nodes.append(node("Mul", ["h", "c"], ["y"]))
    elif case == "two_consumers":
        c = rand(1, 6, 1, 1, seed=5)
        nodes += [node("Mul", ["h", "c"], ["y"]), node("Relu", ["h"], ["z"])]
        outs.append(("z", [N, 6, 3, 3]))
    else:
        c = rand(1, 6, 1, 1, seed=5)
        nodes.append(node("Sub", ["c", "h"], ["y"]))  # c - conv: not a bias shift
    proto = make(nodes, [tensor_input("x", [N, 4, 5, 5])], outs, [init("w", rand(6, 4, 3, 3)), init("c", c)])
    check_pass(proto, ["fold_affine"], fires=False)


# -- MatMul + Add -> Gemm -------------------------------------------------------------------------
def test_matmul_add_to_gemm():
    proto = make([node("MatMul", ["x", "w"], ["h"]), node("Add", ["b", "h"], ["y"])],
                 [tensor_input("x", [N, 5])], [("y", [N, 3])], [init("w", rand(5, 3)), init("b", rand(3))])
    model = check_pass(proto, ["matmul_add_to_gemm"], fires=True, level=1)
    assert ops(model) == {"Gemm": 1}


def test_matmul_add_3d_stays():
    proto = make([node("MatMul", ["x", "w"], ["h"]), node("Add", ["h", "b"], ["y"])],
                 [tensor_input("x", [N, 2, 5])], [("y", [N, 2, 3])], [init("w", rand(5, 3)), init("b", rand(3))])
    check_pass(proto, ["matmul_add_to_gemm"], fires=False)


# -- Pad folding ----------------------------------------------------------------------------------
PADS = init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))


def test_fold_pad_into_conv_and_after_relu_into_maxpool():
    proto = make([node("Pad", ["x", "pads"], ["p"]), node("Conv", ["p", "w"], ["c"], pads=[1, 0, 0, 1]),
                  node("Relu", ["c"], ["r"]), node("Pad", ["r", "pads"], ["rp"]),
                  node("MaxPool", ["rp"], ["y"], kernel_shape=[3, 3])],
                 [tensor_input("x", [N, 3, 6, 6])], [("y", [N, 4, 7, 7])], [PADS, init("w", rand(4, 3, 3, 3))])
    model = check_pass(proto, ["fold_pad"], fires=True, level=1)
    assert "Pad" not in ops(model)


@pytest.mark.parametrize("case", ["nonzero_value", "maxpool_no_relu", "reflect", "channel_pad", "avgpool_exclude"])
def test_fold_pad_must_not_fire(case):
    pads = PADS
    inputs = ["x", "pads"]
    inits = [init("w", rand(4, 3, 3, 3))]
    attrs = {}
    consumer = node("Conv", ["p", "w"], ["y"])
    out = [N, 4, 7, 7]
    if case == "nonzero_value":
        inputs.append("v")
        inits.append(init("v", np.array(1.5, np.float32)))
    elif case == "maxpool_no_relu":
        consumer, out = node("MaxPool", ["p"], ["y"], kernel_shape=[2, 2]), [N, 3, 8, 8]
    elif case == "reflect":
        attrs = {"mode": "reflect"}
    elif case == "channel_pad":
        pads = init("pads", np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64))
        inits = [init("w", rand(4, 4, 3, 3))]
        out = [N, 4, 4, 4]
    else:
        consumer, out = node("AveragePool", ["p"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1]), [N, 3, 10, 10]
    proto = make([node("Pad", inputs, ["p"], **attrs), consumer], [tensor_input("x", [N, 3, 6, 6])],
                 [("y", out)], [pads, *inits])
    check_pass(proto, ["fold_pad"], fires=False)


# -- Transpose / Reshape / Squeeze / Unsqueeze chains -------------------------------------------------
def test_inverse_transposes_cancel_and_others_compose():
    proto = make([node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]), node("Transpose", ["a"], ["b"], perm=[0, 3, 1, 2]),
                  node("Relu", ["b"], ["r"]), node("Transpose", ["r"], ["c"], perm=[0, 2, 1, 3]),
                  node("Transpose", ["c"], ["y"], perm=[0, 1, 3, 2])],
                 [tensor_input("x", [N, 2, 3, 4])], [("y", [N, 3, 4, 2])])
    model = check_pass(proto, ["collapse_reshapes", "eliminate_identity", "remove_unused"], fires=True)
    assert ops(model) == {"Relu": 1, "Transpose": 1}


def test_reshape_chains_collapse():
    proto = make([node("Unsqueeze", ["x", "ax"], ["a"]), node("Flatten", ["a"], ["b"], axis=2),
                  node("Reshape", ["b", "shape"], ["c"]), node("Squeeze", ["c", "ax"], ["y"])],
                 [tensor_input("x", [N, 6, 2])], [("y", [N, 3, 4])],
                 [init("ax", np.array([1], np.int64)), init("shape", np.array([0, 1, 3, 4], np.int64))])
    model = check_pass(proto, ["collapse_reshapes", "remove_unused"], fires=True)
    assert ops(model) == {"Reshape": 1}


def test_lone_transpose_and_reshape_stay():
    proto = make([node("Transpose", ["x"], ["a"], perm=[0, 2, 1]), node("Relu", ["a"], ["b"]),
                  node("Reshape", ["b", "shape"], ["y"])],
                 [tensor_input("x", [N, 2, 3])], [("y", [N, 6])], [init("shape", np.array([0, 6], np.int64))])
    check_pass(proto, ["collapse_reshapes", "push_transposes"], fires=False)


# -- Transposes pushed through elementwise ops -----------------------------------------------
def test_nhwc_transposes_pushed_and_cancelled():
    # NCHW -> NHWC, elementwise work in NHWC with an NHWC-shaped constant, back to NCHW
    proto = make([node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]), node("Relu", ["a"], ["b"]),
                  node("Add", ["b", "bias"], ["c"]), node("Mul", ["c", "k"], ["d"]),
                  node("Transpose", ["y_t"], ["e"], perm=[0, 2, 3, 1]), node("Add", ["d", "e"], ["f"]),
                  node("Softmax", ["f"], ["g"], axis=3), node("Transpose", ["g"], ["y"], perm=[0, 3, 1, 2])],
                 [tensor_input("x", [N, 3, 4, 5]), tensor_input("y_t", [N, 3, 4, 5])], [("y", [N, 3, 4, 5])],
                 [init("bias", rand(3)), init("k", np.array(1.5, np.float32))])
    model = check_pass(proto, ["push_transposes", "collapse_reshapes", "remove_unused"], fires=True)
    assert "Transpose" not in ops(model)


def test_transposes_that_do_not_cancel_stay():
    proto = make([node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]), node("Relu", ["a"], ["b"]),
                  node("Transpose", ["b"], ["y"], perm=[0, 2, 3, 1])],
                 [tensor_input("x", [N, 2, 3, 4])], [("y", [N, 4, 2, 3])])
    model = check_pass(proto, ["push_transposes"], fires=False)
    assert ops(model)["Transpose"] == 2


# -- Flatten / Reshape before Gemm ---------------------------------------------------------------
def test_nhwc_flatten_transpose_folded_into_weights():
    proto = make([node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), node("Reshape", ["t", "shape"], ["f"]),
                  node("MatMul", ["f", "w"], ["m"]), node("Add", ["m", "b"], ["y"])],
                 [tensor_input("x", [N, 3, 4, 5])], [("y", [N, 7])],
                 [init("shape", np.array([-1, 60], np.int64)), init("w", rand(60, 7)), init("b", rand(7))])
    model = check_pass(proto, None, fires=True)
    assert "Transpose" not in ops(model) and ops(model)["Gemm"] == 1
    at_level1 = check_pass(proto, None, fires=True, level=1)  # Gemm fusion only: W is a parameter
    assert ops(at_level1)["Transpose"] == 1


def test_reshape_before_gemm_becomes_flatten():
    proto = make([node("Reshape", ["x", "shape"], ["f"]), node("Gemm", ["f", "w"], ["y"], transB=1)],
                 [tensor_input("x", [N, 3, 2, 2])], [("y", [N, 5])],
                 [init("shape", np.array([0, -1], np.int64)), init("w", rand(5, 12))])
    model = check_pass(proto, ["gemm_input"], fires=True, level=1)
    assert ops(model) == {"Flatten": 1, "Gemm": 1}


def test_reshape_to_own_shape_with_symbolic_batch_is_removed():
    proto = make([node("Relu", ["x"], ["r"]), node("Reshape", ["r", "shape"], ["y"])],
                 [tensor_input("x", [N, 5, 1, 1])], [("y", [N, 5, 1, 1])],
                 [init("shape", np.array([-1, 5, 1, 1], np.int64))])
    model = check_pass(proto, ["eliminate_identity"], fires=True)
    assert ops(model) == {"Relu": 1}
    other = make([node("Relu", ["x"], ["r"]), node("Reshape", ["r", "shape"], ["y"])],
                 [tensor_input("x", [N, 5, 1, 1])], [("y", [N, 1, 5, 1])],
                 [init("shape", np.array([-1, 1, 5, 1], np.int64))])
    check_pass(other, ["eliminate_identity"], fires=False)


@pytest.mark.parametrize("op,keepdims,fires", [("ReduceMean", 0, True), ("ReduceMax", 1, True),
                                               ("ReduceL2", 0, False), ("ReduceSumSquare", 1, False)])
def test_reduction_over_unit_axes(op, keepdims, fires):
    out = [N, 1, 1, 6] if keepdims else [N, 6]
    proto = make([node("Relu", ["x"], ["r"]), node(op, ["r", "axes"], ["y"], keepdims=keepdims)],
                 [tensor_input("x", [N, 1, 1, 6])], [("y", out)], [init("axes", np.array([1, 2], np.int64))])
    model = check_pass(proto, ["collapse_reshapes", "remove_unused"], fires=fires)
    assert (op in ops(model)) != fires


def test_reduction_over_real_axes_stays():
    proto = make([node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], [tensor_input("x", [N, 2, 1, 6])],
                 [("y", [N, 6])], [init("axes", np.array([1, 2], np.int64))])
    check_pass(proto, ["collapse_reshapes"], fires=False)


def test_nhwc_global_pool_takes_the_transpose_and_keepdims_replaces_reshape():
    # TensorFlow squeeze-and-excitation: NCHW -> NHWC, mean over H, W, reshape back to (N, C, 1, 1)
    proto = make([node("Relu", ["x"], ["r"]), node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
                  node("ReduceMean", ["t", "axes"], ["m"], keepdims=0), node("Reshape", ["m", "shape"], ["s"]),
                  node("Mul", ["r", "s"], ["y"])],
                 [tensor_input("x", [N, 4, 3, 5])], [("y", [N, 4, 3, 5])],
                 [init("axes", np.array([1, 2], np.int64)), init("shape", np.array([-1, 4, 1, 1], np.int64))])
    model = check_pass(proto, ["push_transposes", "collapse_reshapes", "remove_unused"], fires=True)
    assert ops(model) == {"Relu": 1, "ReduceMean": 1, "Mul": 1}


def test_reduction_that_reorders_kept_axes_keeps_its_transpose():
    # kept axes (H, C) of NHWC come out in a different order than in NCHW
    proto = make([node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), node("ReduceMean", ["t", "axes"], ["y"], keepdims=0)],
                 [tensor_input("x", [N, 4, 3, 5])], [("y", [3, 4])], [init("axes", np.array([0, 2], np.int64))])
    model = check_pass(proto, ["push_transposes"], fires=False)
    assert ops(model)["Transpose"] == 1


# -- Concat fusion, unit-axis Transposes, keepdims ------------------------------------------------
def test_nested_concats_fuse_on_the_same_axis_only():
    proto = make([node("Concat", ["x", "x"], ["a"], axis=1), node("Relu", ["x"], ["r"]),
                  node("Concat", ["r", "a", "x"], ["y"], axis=-2), node("Concat", ["x", "x"], ["b"], axis=2),
                  node("Concat", ["b", "b"], ["z"], axis=1)],
                 [tensor_input("x", [N, 2, 3])], [("y", [N, 8, 3]), ("z", [N, 4, 6])])
    model = check_pass(proto, ["fuse_concats"], fires=True)
    assert ops(model) == {"Concat": 3, "Relu": 1}


def test_transpose_of_unit_axes_becomes_a_reshape_and_collapses():
    # Keras SE block: (N, C) -> (N, 1, 1, C) -> NCHW (N, C, 1, 1)
    proto = make([node("Reshape", ["x", "shape"], ["r"]), node("Transpose", ["r"], ["y"], perm=[0, 3, 1, 2])],
                 [tensor_input("x", [N, 6])], [("y", [N, 6, 1, 1])], [init("shape", np.array([0, 1, 1, 6], np.int64))])
    model = check_pass(proto, ["collapse_reshapes", "remove_unused"], fires=True)
    assert ops(model) == {"Reshape": 1}
    real = make([node("Transpose", ["x"], ["y"], perm=[0, 2, 1])], [tensor_input("x", [N, 2, 3])], [("y", [N, 3, 2])])
    check_pass(real, ["collapse_reshapes"], fires=False)


def test_keepdims_reduction_then_flatten_reshape():
    proto = make([node("ReduceMean", ["x", "axes"], ["m"], keepdims=1), node("Reshape", ["m", "shape"], ["f"]),
                  node("Gemm", ["f", "w"], ["y"])],
                 [tensor_input("x", [N, 4, 3, 3])], [("y", [N, 2])],
                 [init("axes", np.array([2, 3], np.int64)), init("shape", np.array([0, 4], np.int64)), init("w", rand(4, 2))])
    model = check_pass(proto, ["collapse_reshapes"], fires=True)
    assert ops(model) == {"ReduceMean": 1, "Gemm": 1}


# -- constant Mul/Add before Conv/Gemm/MatMul ----------------------------------------------------
@pytest.mark.parametrize("op,const,pads,group", [("Mul", (3, 1, 1), [1, 1, 1, 1], 1), ("Div", (), [1, 0, 1, 0], 3),
                                                 ("Sub", (1, 3, 1, 1), [0, 0, 0, 0], 1), ("Add", (), None, 3)])
def test_fold_input_affine_into_conv(op, const, pads, group):
    c = rand(*const, seed=4, positive=True) if const else np.array(0.7, np.float32)
    proto = make([node(op, ["x", "c"], ["s"]), node("Conv", ["s", "w", "b"], ["y"], group=group,
                                                    **({"pads": pads} if pads else {}))],
                 [tensor_input("x", [N, 3, 5, 5])], [("y", [N, 6, None, None])],
                 [init("c", c), init("w", rand(6, 3 // group, 3, 3)), init("b", rand(6))])
    model = check_pass(proto, ["fold_input_affine"], fires=True)
    assert ops(model) == {"Conv": 1}


def test_fold_input_affine_into_gemm_and_matmul():
    proto = make([node("Add", ["x", "c"], ["a"]), node("Gemm", ["a", "w", "b"], ["g"], transB=1, alpha=0.5, beta=2.0),
                  node("Mul", ["k", "g"], ["m"]), node("MatMul", ["m", "w2"], ["y"])],
                 [tensor_input("x", [N, 5])], [("y", [N, 3])],
                 [init("c", rand(5)), init("w", rand(4, 5)), init("b", rand(4)), init("k", rand(1, 4, seed=9)),
                  init("w2", rand(4, 3))])
    model = check_pass(proto, ["fold_input_affine"], fires=True)
    assert ops(model) == {"Gemm": 1, "MatMul": 1}


@pytest.mark.parametrize("case", ["add_with_padding", "spatial_scale", "two_consumers"])
def test_fold_input_affine_must_not_fire(case):
    outs = [("y", [N, 6, 5, 5])]
    c = rand(3, 1, 1, seed=4)
    nodes = [node("Add" if case == "add_with_padding" else "Mul", ["x", "c"], ["s"]),
             node("Conv", ["s", "w"], ["y"], pads=[1, 1, 1, 1])]
    if case == "spatial_scale":
        c = rand(1, 5, 5, seed=4)
    if case == "two_consumers":
        nodes.append(node("Relu", ["s"], ["z"]))
        outs.append(("z", [N, 3, 5, 5]))
    proto = make(nodes, [tensor_input("x", [N, 3, 5, 5])], outs, [init("c", c), init("w", rand(6, 3, 3, 3))])
    check_pass(proto, ["fold_input_affine"], fires=False)


# -- shape inference ------------------------------------------------------------------------------------
def test_shape_inference_annotates_every_value_and_keeps_the_batch_symbolic():
    proto = make([node("Conv", ["x", "w"], ["c"]), node("Relu", ["c"], ["r"]), node("Flatten", ["r"], ["y"])],
                 [tensor_input("x", [N, 2, 5, 5])], [("y", [N, None])], [init("w", rand(3, 2, 3, 3))])
    model = optimize(ir.serde.deserialize_model(proto), passes=["shape_inference"])
    shapes = {o.name: [d if isinstance(d, int) else d.value for d in o.shape] for n in model.graph for o in n.outputs}
    assert shapes == {"c": ["N", 3, 3, 3], "r": ["N", 3, 3, 3], "y": ["N", 27]}
    assert [d if isinstance(d, int) else d.value for d in model.graph.inputs[0].shape] == ["N", 2, 5, 5]


def test_nhwc_input_scaling_moves_behind_the_input_transpose_and_into_the_conv():
    proto = make([node("Mul", ["x", "s"], ["m"]), node("Add", ["m", "c"], ["a"]),
                  node("Transpose", ["a"], ["t"], perm=[0, 3, 1, 2]), node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])],
                 [tensor_input("x", [N, 5, 5, 3])], [("y", [N, 4, 5, 5])],
                 [init("s", np.array(1 / 255, np.float32)), init("c", rand(3, seed=2)), init("w", rand(4, 3, 3, 3))])
    # the Transpose only climbs over an op reading the graph input (here: an Add reading a Mul)
    model = check_pass(proto, ["push_transposes"], fires=False)
    assert ops(model)["Transpose"] == 1
    simple = make([node("Mul", ["x", "s"], ["m"]), node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
                   node("Conv", ["t", "w"], ["y"], pads=[1, 1, 1, 1])],
                  [tensor_input("x", [N, 5, 5, 3])], [("y", [N, 4, 5, 5])],
                  [init("s", rand(3, seed=3)), init("w", rand(4, 3, 3, 3))])
    model = check_pass(simple, None, fires=True)
    assert ops(model) == {"Transpose": 1, "Conv": 1}
    assert next(iter(model.graph)).inputs[0].is_graph_input()


@pytest.mark.parametrize("case", ["concat", "reduce_keepdims", "prelu"])
def test_transposes_pushed_through_concat_reduce_prelu(case):
    to_nhwc, to_nchw = [0, 2, 3, 1], [0, 3, 1, 2]
    nodes = [node("Transpose", ["x"], ["a"], perm=to_nhwc)]
    inits = []
    out = [N, 3, 4, 5]
    if case == "concat":
        nodes += [node("Transpose", ["x2"], ["b"], perm=to_nhwc), node("Concat", ["a", "b"], ["m"], axis=3)]
        out = [N, 6, 4, 5]
    elif case == "reduce_keepdims":
        nodes.append(node("ReduceMax", ["a", "axes"], ["m"], keepdims=1))
        inits.append(init("axes", np.array([1, 2], np.int64)))
        out = [N, 3, 1, 1]
    else:
        nodes.append(node("PRelu", ["a", "slope"], ["m"]))
        inits.append(init("slope", rand(3, seed=8)))
    nodes.append(node("Transpose", ["m"], ["y"], perm=to_nchw))
    inputs = [tensor_input("x", [N, 3, 4, 5])] + ([tensor_input("x2", [N, 3, 4, 5])] if case == "concat" else [])
    proto = make(nodes, inputs, [("y", out)], inits)
    model = check_pass(proto, ["push_transposes", "collapse_reshapes", "remove_unused"], fires=True)
    assert "Transpose" not in ops(model)
