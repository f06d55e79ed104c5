"""Detection and indexing ops on the torch backend: randomized cases compared with ONNX Runtime,
which must agree exactly (NMS selections and their order, tie-breaking included), and ONNX's own
RoiAlign node cases (the other ops' node cases run in test_torch_conformance)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from portanet.runtime.session import Session
from tests.runtime.torch_backend._onnx_cases import node_cases

OPS = frozenset({"NonMaxSuppression", "GatherND", "ScatterND", "ScatterElements", "NonZero", "RoiAlign", "OneHot",
                 "MaxRoiPool"})


def _onnx_case_names() -> list[str]:
    # the other ops' node cases run in test_torch_conformance; RoiAlign's expected values there
    # are written to 4 decimals, so they are checked here at that precision
    return sorted(name for name in node_cases(OPS) if "roialign" in name)


@pytest.mark.parametrize("name", _onnx_case_names())
def test_onnx_node_cases(name):
    case = node_cases(OPS)[name]
    model = ir.serde.deserialize_model(case.model)
    sess = Session(model, backend="torch")
    feeds = {i.name: a for i, a in zip(case.model.graph.input, case.inputs)}
    got = sess.run(feeds)
    for out, want in zip(case.model.graph.output, case.outputs):
        np.testing.assert_allclose(got[out.name], want, rtol=0, atol=1e-4, err_msg=name)


def _model(op: str, inputs: list[tuple[str, int, list]], outputs: list[tuple[str, int]], consts: dict | None = None,
           **attrs) -> ir.Model:
    consts = consts or {}
    names = [n for n, _, _ in inputs] + list(consts)
    node = helper.make_node(op, names, [n for n, _ in outputs], **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, None) for n, t in outputs],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _both(model: ir.Model, feeds: dict[str, np.ndarray]) -> tuple[dict, dict]:
    return Session(model).run(feeds), Session(model, backend="torch").run(feeds)


NMS_CASES = {
    "ties_corners": dict(center=0, thr=True, max_out=50, iou=0.3),
    "ties_center_boxes": dict(center=1, thr=False, max_out=4, iou=0.5),
    "no_limit_hit": dict(center=0, thr=False, max_out=1000, iou=0.0),
    "iou_one": dict(center=0, thr=True, max_out=7, iou=1.0),
}


@pytest.mark.parametrize("case", list(NMS_CASES))
def test_nms_matches_onnxruntime(case):
    kw = NMS_CASES[case]
    rng = np.random.default_rng(len(case))
    b, c, p = 3, 4, 60
    xy = rng.uniform(0, 1, (b, p, 2))
    wh = rng.uniform(0.05, 0.4, (b, p, 2))
    if kw["center"]:
        boxes = np.concatenate([xy, wh], -1)
    else:  # corners in any order; a few zero-area boxes
        boxes = np.concatenate([xy, xy + wh * rng.choice([-1, 1], (b, p, 2))], -1)
        boxes[:, :3, 2] = boxes[:, :3, 0]
    scores = np.round(rng.uniform(0, 1, (b, c, p)), 1)  # many exact ties
    consts = {"max_out": np.asarray([kw["max_out"]], np.int64), "iou": np.asarray([kw["iou"]], np.float32)}
    if kw["thr"]:
        consts["score_thr"] = np.asarray([0.3], np.float32)
    model = _model("NonMaxSuppression", [("boxes", TensorProto.FLOAT, [b, p, 4]), ("scores", TensorProto.FLOAT, [b, c, p])],
                   [("sel", TensorProto.INT64)], consts, center_point_box=kw["center"])
    ort, tch = _both(model, {"boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32)})
    assert ort["sel"].shape[0] > 10
    np.testing.assert_array_equal(tch["sel"], ort["sel"])


def test_gather_scatter_nonzero_match_onnxruntime():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((3, 5, 4)).astype(np.float32)
    # GatherND with batch_dims 1 and negative indices
    idx = rng.integers(-5, 5, (3, 6, 1)).astype(np.int64)
    m = _model("GatherND", [("d", TensorProto.FLOAT, [3, 5, 4]), ("i", TensorProto.INT64, [3, 6, 1])],
               [("y", TensorProto.FLOAT)], batch_dims=1)
    ort, tch = _both(m, {"d": data, "i": idx})
    np.testing.assert_array_equal(tch["y"], ort["y"])
    idx2 = np.stack([rng.integers(0, 3, 7), rng.integers(0, 5, 7)], 1).astype(np.int64)
    m = _model("GatherND", [("d", TensorProto.FLOAT, [3, 5, 4]), ("i", TensorProto.INT64, [7, 2])],
               [("y", TensorProto.FLOAT)])
    ort, tch = _both(m, {"d": data, "i": idx2})
    np.testing.assert_array_equal(tch["y"], ort["y"])
    # ScatterND: unique indices for "none", repeated ones for the reductions
    uniq = np.asarray([[0, 1], [2, 4], [1, 0]], np.int64)
    rep = np.asarray([[0, 1], [2, 4], [0, 1], [1, 0]], np.int64)
    for reduction, ind in [("none", uniq), ("add", rep), ("mul", rep), ("max", rep), ("min", rep)]:
        upd = rng.standard_normal((len(ind), 4)).astype(np.float32)
        m = _model("ScatterND", [("d", TensorProto.FLOAT, [3, 5, 4]), ("i", TensorProto.INT64, list(ind.shape)),
                                 ("u", TensorProto.FLOAT, list(upd.shape))], [("y", TensorProto.FLOAT)],
                   reduction=reduction)
        ort, tch = _both(m, {"d": data, "i": ind, "u": upd})
        np.testing.assert_allclose(tch["y"], ort["y"], rtol=1e-6, err_msg=reduction)
    # ScatterElements on the last axis, negative indices
    ind = np.stack([rng.permutation(4)[:2] - 4 for _ in range(15)]).reshape(3, 5, 2).astype(np.int64)
    upd = rng.standard_normal((3, 5, 2)).astype(np.float32)
    for reduction in ("none", "add", "max"):
        m = _model("ScatterElements", [("d", TensorProto.FLOAT, [3, 5, 4]), ("i", TensorProto.INT64, [3, 5, 2]),
                                       ("u", TensorProto.FLOAT, [3, 5, 2])], [("y", TensorProto.FLOAT)],
                   axis=-1, reduction=reduction)
        ort, tch = _both(m, {"d": data, "i": ind, "u": upd})
        np.testing.assert_array_equal(tch["y"], ort["y"], err_msg=reduction)
    m = _model("NonZero", [("d", TensorProto.FLOAT, [3, 5, 4])], [("y", TensorProto.INT64)])
    ort, tch = _both(m, {"d": np.where(data > 0.3, data, 0).astype(np.float32)})
    np.testing.assert_array_equal(tch["y"], ort["y"])


def test_roi_pooling_ops_match_onnxruntime():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    # corners on .5 after scaling test the rounding (half away from zero)
    rois5 = np.asarray([[0, 1, 1, 9, 7], [1, 3, 0, 19, 23], [0, 5, 5, 5, 5], [1, -2, -3, 30, 4], [0, 2.5, 1.5, 7, 9]],
                       np.float32)
    m = _model("MaxRoiPool", [("x", TensorProto.FLOAT, [2, 3, 12, 10]), ("r", TensorProto.FLOAT, [5, 5])],
               [("y", TensorProto.FLOAT)], pooled_shape=[3, 4], spatial_scale=0.5)
    ort, tch = _both(m, {"x": x, "r": rois5})
    np.testing.assert_array_equal(tch["y"], ort["y"])
    rois4 = rois5[:, 1:].copy()
    bidx = rois5[:, 0].astype(np.int64)
    for mode in ("avg", "max"):
        for ctm in ("half_pixel", "output_half_pixel"):
            for ratio in (0, 2):
                m = _model("RoiAlign", [("x", TensorProto.FLOAT, [2, 3, 12, 10]), ("r", TensorProto.FLOAT, [5, 4]),
                                        ("b", TensorProto.INT64, [5])], [("y", TensorProto.FLOAT)],
                           mode=mode, coordinate_transformation_mode=ctm, output_height=3, output_width=2,
                           sampling_ratio=ratio, spatial_scale=0.75)
                ort, tch = _both(m, {"x": x, "r": rois4, "b": bidx})
                np.testing.assert_allclose(tch["y"], ort["y"], rtol=1e-5, atol=1e-6, err_msg=f"{mode} {ctm} {ratio}")
