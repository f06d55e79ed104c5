"""What ``save_onnx`` writes must run, with the same numbers, in every consumer.

Regression tests for the portability fixes: no intermediate ``value_info`` (tract refused
files whose value_info named the symbolic batch once the input was fixed), average pooling
that counts its padding written as an explicit ``Pad`` (OpenCV ignores
``count_include_pad=1``), ``Constant`` lists written as tensors (OpenCV reads no other form),
and down-conversion of every op whose schema changed between opsets 13 and 21. The reference
is always ONNX Runtime on the unconverted model (a different file and code path than the one
under test); the other consumers are the real libraries.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from portanet.ir.io import save_onnx
from portanet.ir.portable import make_portable
from tests.tolerance import parity_bound

RNG = np.random.default_rng(0)



def _assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert float(np.max(np.abs(got.astype(np.float64) - ref))) <= parity_bound(ref)


def _ort(model: onnx.ModelProto | str, feeds: dict) -> list[np.ndarray]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)


def _model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    # outputs declared without a shape get the inferred one (ranked, symbolic batch kept)
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(m).graph.output}
    for o in m.graph.output:
        if not o.type.tensor_type.HasField("shape"):
            o.CopyFrom(inferred[o.name])
    onnx.checker.check_model(m, full_check=True)
    return m


def _save(proto: onnx.ModelProto, path, opset: int | None = None):
    import onnx_ir as ir

    return save_onnx(ir.serde.deserialize_model(proto), path, opset=opset)


def _avgpool_model(cip: int, ceil: int, pads=(1, 1, 2, 2)) -> onnx.ModelProto:
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=list(pads),
                            count_include_pad=cip, ceil_mode=ceil, name="pool")
    return _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 7, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])


# ------------------------------------------------------------------- average pooling with padding
def test_count_include_pad_becomes_explicit_pad_with_equal_outputs(tmp_path):
    proto = _avgpool_model(cip=1, ceil=0)
    x = RNG.standard_normal((3, 2, 7, 8)).astype(np.float32)
    ref = _ort(proto, {"x": x})[0]
    out = _save(proto, tmp_path / "m.onnx")
    saved = onnx.load(str(out))
    assert [n.op_type for n in saved.graph.node] == ["Pad", "AveragePool"]
    pool = saved.graph.node[1]
    assert {a.name: helper.get_attribute_value(a) for a in pool.attribute}.get("count_include_pad") == 0
    assert not any(a.name == "pads" for a in pool.attribute)
    _assert_close(_ort(out, {"x": x})[0], ref)


@pytest.mark.parametrize("cip, ceil", [(0, 0), (1, 1)])
def test_pools_without_a_portable_form_are_left_alone(cip, ceil):
    """count_include_pad=0 needs nothing; with ceil_mode the last window's start rule
    depends on where the padding sits, so an explicit Pad would change the output size."""
    proto = _avgpool_model(cip=cip, ceil=ceil)
    assert [n.op_type for n in make_portable(proto).graph.node] == ["AveragePool"]


def test_opencv_reads_the_explicit_pad_form(tmp_path):
    """OpenCV's ONNX importer on the saved file equals ONNX Runtime on the original
    (before the rewrite OpenCV divided by the real cells only)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV DNN (portanet[caffe-ref]) not installed")
    proto = _avgpool_model(cip=1, ceil=0)
    x = RNG.standard_normal((3, 2, 7, 8)).astype(np.float32)
    ref = _ort(proto, {"x": x})[0]
    net = cv2.dnn.readNetFromONNX(str(_save(proto, tmp_path / "m.onnx")))
    net.setInput(x, "x")
    _assert_close(np.asarray(net.forward()), ref)


def test_constant_lists_become_tensors(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["s"], value_floats=[1.0, 1.0, 2.0, 2.0]),
        helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest"),
    ]
    proto = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    x = RNG.standard_normal((2, 2, 3, 3)).astype(np.float32)
    out = _save(proto, tmp_path / "m.onnx")
    const = onnx.load(str(out)).graph.node[0]
    assert [a.name for a in const.attribute] == ["value"]
    _assert_close(_ort(out, {"x": x})[0], _ort(proto, {"x": x})[0])


# ------------------------------------------------------------------- value_info
def test_saved_file_has_no_intermediate_value_info(tmp_path):
    from model_zoo.caffe.writer import build
    from portanet.converters.registry import ConvertOptions, convert_paths

    model = convert_paths(list(build("lenet")), ConvertOptions())
    assert any(v.shape is not None for n in model.graph for v in n.outputs)  # the IR keeps its shapes
    for opset in (13, 18, 21):  # 21 goes through onnx's converter, which writes value_info
        saved = onnx.load(str(save_onnx(model, tmp_path / f"m{opset}.onnx", opset=opset)))
        assert len(saved.graph.value_info) == 0
        assert saved.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_tract_runs_a_saved_file_with_a_fixed_batch(tmp_path):
    """tract with the input fact pinned to batch 3 ('Impossible to unify Sym(N) with Val(3)'
    before the fix); its numbers equal ONNX Runtime's."""
    tract = pytest.importorskip("tract", reason="tract (portanet[tract]) not installed")
    from model_zoo.caffe.writer import build
    from portanet.converters.registry import ConvertOptions, convert_paths

    path = save_onnx(convert_paths(list(build("lenet")), ConvertOptions()), tmp_path / "lenet.onnx")
    x = RNG.standard_normal((3, 1, 28, 28)).astype(np.float32)
    m = tract.onnx().load(str(path))
    m.set_input_fact(0, "3,1,28,28,f32")
    got = m.into_model().into_runnable().run([x])[0].to_numpy()
    _assert_close(got, _ort(path, {"data": x})[0])


# ------------------------------------------------------------------- down-conversion
def _vi(name, dims, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, dims)


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


X4 = RNG.standard_normal((2, 4, 6, 6)).astype(np.float32)

#: name -> (opset of the original, nodes, initializers, output rank); each op's schema changed
#: between 13 and 21, and onnx's down-converter refuses or mis-writes it
DOWNGRADE_CASES = {
    "reduce_axes_input": (18, [helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=1, noop_with_empty_axes=0)],
                          [_i64("ax", [2, 3])]),
    "reduce_empty_noop": (18, [helper.make_node("ReduceMax", ["x"], ["y"], keepdims=1, noop_with_empty_axes=1)], []),
    "reduce_l2_all": (18, [helper.make_node("ReduceL2", ["x"], ["y"], keepdims=0)], []),
    "split_num_outputs": (18, [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
                               helper.make_node("Sub", ["a", "b"], ["y"])], []),
    "split_uneven": (18, [helper.make_node("Pad", ["x", "pd7"], ["x7"], mode="constant"),  # W 6 -> 7
                          helper.make_node("Split", ["x7"], ["a", "b", "c"], axis=3, num_outputs=3),  # 3, 3, 1
                          helper.make_node("Concat", ["c", "a"], ["y"], axis=3)], [_i64("pd7", [0, 0, 0, 0, 0, 0, 0, 1])]),
    "reshape_allowzero": (18, [helper.make_node("Reshape", ["x", "shp"], ["y"], allowzero=0)], [_i64("shp", [0, -1])]),
    "reshape_allowzero_1": (18, [helper.make_node("Reshape", ["x", "shp"], ["y"], allowzero=1)], [_i64("shp", [2, -1, 4])]),
    "shape_slice": (18, [helper.make_node("Shape", ["x"], ["s"], start=2, end=4),
                         helper.make_node("ConstantOfShape", ["s"], ["z"], value=numpy_helper.from_array(np.ones(1, np.float32))),
                         helper.make_node("Add", ["x", "z"], ["y"])], []),
    "pad_axes": (18, [helper.make_node("Pad", ["x", "pd", "", "pax"], ["y"], mode="constant")],
                 [_i64("pd", [1, 0, 2, 1]), _i64("pax", [2, -1])]),
    "hard_swish": (18, [helper.make_node("HardSwish", ["x"], ["y"])], []),
    "mish": (18, [helper.make_node("Mish", ["x"], ["y"])], []),
    "gelu": (21, [helper.make_node("Gelu", ["x"], ["y"])], []),
    "gelu_tanh": (21, [helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], []),
    "layer_norm": (18, [helper.make_node("LayerNormalization", ["x", "g", "bt"], ["y"], axis=-2, epsilon=1e-3)],
                   [numpy_helper.from_array(RNG.standard_normal((6, 6)).astype(np.float32), "g"),
                    numpy_helper.from_array(RNG.standard_normal((6, 6)).astype(np.float32), "bt")]),
    "cast_like": (18, [helper.make_node("Cast", ["x"], ["xd"], to=TensorProto.DOUBLE),
                       helper.make_node("CastLike", ["xd", "x"], ["y"])], []),
    "resize_defaults": (18, [helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", antialias=0,
                                              keep_aspect_ratio_policy="stretch")],
                        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")]),
    "batchnorm": (18, [helper.make_node("BatchNormalization", ["x", "g4", "b4", "m4", "v4"], ["y"], epsilon=1e-3)],
                  [numpy_helper.from_array(RNG.uniform(0.5, 2, 4).astype(np.float32), n) for n in ("g4", "b4", "m4", "v4")]),
}


@pytest.fixture(scope="module", params=sorted(DOWNGRADE_CASES))
def downgrade_case(request):
    opset, nodes, inits = DOWNGRADE_CASES[request.param]
    proto = _model(nodes, [_vi("x", ["N", 4, 6, 6])], [_vi("y", None)], inits, opset=opset)
    return request.param, proto, _ort(proto, {"x": X4})[0]


@pytest.mark.parametrize("target", [13, 15, 17])
def test_downconverted_ops_keep_outputs(downgrade_case, tmp_path, target):
    name, proto, ref = downgrade_case
    out = _save(proto, tmp_path / f"{name}.onnx", opset=target)
    saved = onnx.load(str(out))
    assert saved.opset_import[0].version == target
    onnx.checker.check_model(saved, full_check=True)
    used = {i for n in saved.graph.node for i in n.input}
    assert all(t.name in used for t in saved.graph.initializer)  # no constants left behind
    _assert_close(_ort(out, {"x": X4})[0], ref)


def test_run_time_reduce_axes_cannot_go_below_18(tmp_path):
    from portanet.errors import InvalidModelError

    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ReduceMean", ["x", "s"], ["y"])]
    proto = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", [])])
    with pytest.raises(InvalidModelError, match="axes are computed at run time"):
        _save(proto, tmp_path / "m.onnx", opset=17)
    assert not (tmp_path / "m.onnx").exists()
