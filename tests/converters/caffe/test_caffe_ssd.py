"""SSD heads (PriorBox, DetectionOutput): portanet's lowering on ONNX Runtime and on the torch
backend against OpenCV's DNN module (which matches the SSD fork's Caffe) and, for what OpenCV
does not implement (several min_sizes, CORNER_SIZE, variance_encoded_in_target, Caffe's rows of
-1 when nothing is detected), against the numpy reference below, written from the SSD fork's
C++ (PriorBoxLayer::Forward_cpu, DetectionOutputLayer::Forward_cpu, ApplyNMSFast, DecodeBBox).

OpenCV pads DetectionOutput to keep_top_k rows with zeros and orders rows by score; Caffe's
order is image, label, descending score: detections compare as row sets (equal scores aside).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from portanet.converters.registry import ConvertOptions, convert_paths
from portanet.runtime.session import Session

cv2 = pytest.importorskip("cv2")
TOL = 1e-5


# --------------------------------------------------------------------------- reference (numpy)
def ref_prior_box(fh, fw, ih, iw, min_sizes, max_sizes=(), ratios=(), flip=True, clip=False,
                  variance=(0.1,), step=None, offset=0.5, img=None):
    """PriorBoxLayer::Forward_cpu, loop for loop."""
    ars = [1.0]
    for r in ratios:
        if any(abs(r - a) < 1e-6 for a in ars):
            continue
        ars.append(r)
        if flip:
            ars.append(1.0 / r)
    img_h, img_w = img if img else (ih, iw)
    sh, sw = step if step else (np.float32(img_h) / np.float32(fh), np.float32(img_w) / np.float32(fw))
    out = []
    for h in range(fh):
        for w in range(fw):
            cx = np.float32((w + offset) * np.float32(sw))
            cy = np.float32((h + offset) * np.float32(sh))
            for s, lo in enumerate(min_sizes):
                sizes = [(lo, lo)]
                if max_sizes:
                    sizes.append((math.sqrt(lo * max_sizes[s]),) * 2)
                sizes += [(lo * math.sqrt(a), lo / math.sqrt(a)) for a in ars if abs(a - 1.0) >= 1e-6]
                for bw, bh in sizes:
                    out += [(cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h, (cx + bw / 2.0) / img_w,
                            (cy + bh / 2.0) / img_h]
    boxes = np.asarray(out, dtype=np.float32)
    if clip:
        boxes = np.clip(boxes, 0, 1)
    var = list(variance) * 4 if len(variance) == 1 else list(variance)
    return np.stack([boxes, np.tile(np.asarray(var, np.float32), len(boxes) // 4)]).reshape(1, 2, -1)


def _decode(prior, var, loc, code, encoded):
    px0, py0, px1, py1 = prior
    v = [1.0] * 4 if encoded else var
    if code == "CORNER":
        return [px0 + v[0] * loc[0], py0 + v[1] * loc[1], px1 + v[2] * loc[2], py1 + v[3] * loc[3]]
    pw, ph = px1 - px0, py1 - py0
    if code == "CORNER_SIZE":
        return [px0 + v[0] * loc[0] * pw, py0 + v[1] * loc[1] * ph, px1 + v[2] * loc[2] * pw,
                py1 + v[3] * loc[3] * ph]
    cx, cy = v[0] * loc[0] * pw + (px0 + px1) / 2, v[1] * loc[1] * ph + (py0 + py1) / 2
    w, h = math.exp(v[2] * loc[2]) * pw, math.exp(v[3] * loc[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _size(b):
    return 0.0 if b[2] < b[0] or b[3] < b[1] else (b[2] - b[0]) * (b[3] - b[1])


def _jaccard(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = iw * ih
    return inter / (_size(a) + _size(b) - inter)


def ref_detection_output(loc, conf, prior, *, num_classes, share=True, bg=0, nms=0.3, top_k=-1, keep_top_k=-1,
                         conf_thr=None, code="CORNER", encoded=False, clip=False):
    """DetectionOutputLayer::Forward_cpu (float64): rows [image, label, score, box] in Caffe's order."""
    n = loc.shape[0]
    npri = prior.shape[-1] // 4
    pri = prior.reshape(2, npri, 4).astype(np.float64)
    nl = 1 if share else num_classes
    loc = loc.reshape(n, npri, nl, 4).astype(np.float64)
    conf = conf.reshape(n, npri, num_classes).astype(np.float64)
    thr = -np.inf if conf_thr is None else conf_thr
    rows = []
    for i in range(n):
        boxes = {c: [_decode(pri[0, p], pri[1, p], loc[i, p, 0 if share else c], code, encoded) for p in range(npri)]
                 for c in range(nl)}
        if clip:
            boxes = {c: [[min(max(x, 0.0), 1.0) for x in b] for b in bs] for c, bs in boxes.items()}
        kept = {}
        for c in range(num_classes):
            if c == bg:
                continue
            bs = boxes[0 if share else c]
            order = [p for p in sorted(range(npri), key=lambda p: -conf[i, p, c]) if conf[i, p, c] > thr]
            if top_k > -1:
                order = order[:top_k]
            sel = []
            for p in order:
                if all(_jaccard(bs[p], bs[q]) <= nms for q in sel):
                    sel.append(p)
            kept[c] = sel
        if keep_top_k > -1 and sum(map(len, kept.values())) > keep_top_k:
            pairs = sorted(((conf[i, p, c], c, p) for c, ps in kept.items() for p in ps), key=lambda t: -t[0])
            pairs = pairs[:keep_top_k]
            kept = {c: [p for _, cc, p in pairs if cc == c] for c in kept}
        for c in sorted(kept):
            bs = boxes[0 if share else c]
            rows += [[i, c, conf[i, p, c], *bs[p]] for p in kept[c]]
    if not rows:
        return np.asarray([[i] + [-1] * 6 for i in range(n)], np.float32).reshape(1, 1, -1, 7)
    return np.asarray(rows, np.float32).reshape(1, 1, -1, 7)


def match_rows(got: np.ndarray, ref: np.ndarray, tol: float = TOL) -> int:
    """Assert ``got`` and ``ref`` (R, 7) hold the same rows (any order, |diff| <= tol); OpenCV's
    all-zero padding rows are dropped from ``ref``. Returns the row count."""
    got, ref = got.reshape(-1, 7), ref.reshape(-1, 7)
    ref = ref[~np.all(ref == 0, axis=1)]
    assert len(got) == len(ref), (len(got), len(ref))
    free = np.ones(len(ref), bool)
    for row in got:
        hits = np.where(free & np.all(np.abs(ref - row) <= tol + 1e-4 * np.abs(ref), axis=1))[0]
        assert len(hits), f"row {row} has no match in the reference"
        free[hits[0]] = False
    return len(got)


# ------------------------------------------------------------------------------------- nets
def _head(src, name, per_cell, n_loc, classes, prior):
    return f'''
layer {{ name: "{name}_loc" type: "Convolution" bottom: "{src}" top: "{name}_loc" convolution_param {{ num_output: {per_cell * 4 * n_loc} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{name}_loc_perm" type: "Permute" bottom: "{name}_loc" top: "{name}_loc_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_loc_flat" type: "Flatten" bottom: "{name}_loc_perm" top: "{name}_loc_flat" }}
layer {{ name: "{name}_conf" type: "Convolution" bottom: "{src}" top: "{name}_conf" convolution_param {{ num_output: {per_cell * classes} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{name}_conf_perm" type: "Permute" bottom: "{name}_conf" top: "{name}_conf_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_conf_flat" type: "Flatten" bottom: "{name}_conf_perm" top: "{name}_conf_flat" }}
layer {{ name: "{name}_prior" type: "PriorBox" bottom: "{src}" bottom: "data" top: "{name}_prior" prior_box_param {{ {prior} }} }}
'''


def tiny_ssd(caffe, *, classes=4, share=True, detection="", input_shape=(2, 3, 32, 32), variance=0.1):
    """Two feature maps (16x16, 8x8), 4 + 3 priors per cell, softmax confidences. CORNER codes
    need a small ``variance``: random offsets must not turn boxes inside out (see the module)."""
    n_loc = 1 if share else classes
    if "background_label_id" not in detection:  # OpenCV requires the field
        detection = "background_label_id: 0 " + detection
    layers = (
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }\n'
        'layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" '
        'convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }\n'
        + _head("conv1", "h1", 4, n_loc, classes, "min_size: 6 max_size: 12 aspect_ratio: 2 flip: true clip: false "
                f"variance: {variance} variance: {variance} variance: {2 * variance} variance: {2 * variance}")
        + _head("conv2", "h2", 3, n_loc, classes, "min_size: 12 aspect_ratio: 2 aspect_ratio: 3 flip: false "
                f"clip: true variance: {variance} step: 4 offset: 0.4")
        + f'''
layer {{ name: "mbox_loc" type: "Concat" bottom: "h1_loc_flat" bottom: "h2_loc_flat" top: "mbox_loc" concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_conf" type: "Concat" bottom: "h1_conf_flat" bottom: "h2_conf_flat" top: "mbox_conf" concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_priorbox" type: "Concat" bottom: "h1_prior" bottom: "h2_prior" top: "mbox_priorbox" concat_param {{ axis: 2 }} }}
layer {{ name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape" reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}
layer {{ name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax" softmax_param {{ axis: 2 }} }}
layer {{ name: "conf_flat" type: "Flatten" bottom: "conf_softmax" top: "conf_flat" }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "conf_flat" bottom: "mbox_priorbox"
  top: "detection_out" detection_output_param {{ num_classes: {classes} share_location: {str(share).lower()} {detection} }} }}
''')
    return caffe.write(caffe.net_text(layers, input_shape))


def _with_outputs(model, names):
    import onnx
    import onnx_ir as ir

    proto = ir.serde.serialize_model(model)
    for name in names:
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return ir.serde.deserialize_model(proto)


def _feeds(shape, seed=0):
    return {"data": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _both(model, feeds, names):
    """ORT and torch-backend outputs; the two must agree row for row (same order)."""
    ort = Session(model).run(feeds)
    tch = Session(model, backend="torch").run(feeds)
    for name in names:
        assert ort[name].shape == tch[name].shape, name
        np.testing.assert_allclose(tch[name], ort[name], rtol=1e-4, atol=TOL, err_msg=name)
    return ort


# -------------------------------------------------------------------------------------- tests
OPENCV_CASES = {
    "center_size": "nms_param { nms_threshold: 0.45 top_k: 40 } code_type: CENTER_SIZE keep_top_k: 30 "
                   "confidence_threshold: 0.3",
    "corner": "nms_param { nms_threshold: 0.3 } code_type: CORNER confidence_threshold: 0.4 keep_top_k: 400",
    "no_threshold": "nms_param { nms_threshold: 0.5 top_k: 20 } code_type: CENTER_SIZE keep_top_k: 25",
    "background_2": "background_label_id: 2 nms_param { nms_threshold: 0.45 top_k: 30 } code_type: CENTER_SIZE keep_top_k: 50 "
                    "confidence_threshold: 0.35",
    "opencv_clip": "nms_param { nms_threshold: 0.45 top_k: 30 } code_type: CENTER_SIZE confidence_threshold: 0.3 keep_top_k: 60 "
                   "clip: true",
}


@pytest.mark.parametrize("share", [True, False], ids=["shared", "per_class"])
@pytest.mark.parametrize("case", list(OPENCV_CASES))
def test_detection_output_matches_opencv(caffe, case, share):
    proto, weights = tiny_ssd(caffe, share=share, detection=OPENCV_CASES[case], variance=0.02 if case == "corner" else 0.1)
    model = _with_outputs(convert_paths([proto, weights]), ["mbox_loc", "conf_flat", "mbox_priorbox"])
    feeds = _feeds((2, 3, 32, 32))
    got = _both(model, feeds, ["detection_out"])
    ref = caffe.opencv(proto, weights, feeds, ["detection_out", "mbox_priorbox"])
    np.testing.assert_allclose(got["mbox_priorbox"], ref["mbox_priorbox"], rtol=1e-6, atol=1e-6)
    rows = match_rows(got["detection_out"], ref["detection_out"])
    assert rows >= 10  # a non-trivial number of detections


NUMPY_CASES = {
    "corner_size": dict(code="CORNER_SIZE", nms=0.4, top_k=30, conf_thr=0.3),
    "encoded_center": dict(code="CENTER_SIZE", encoded=True, nms=0.45, top_k=25, keep_top_k=20, conf_thr=0.3),
    "keep_top_k_trims": dict(code="CENTER_SIZE", nms=0.45, top_k=50, keep_top_k=7, conf_thr=0.25),
    "nothing_detected": dict(code="CENTER_SIZE", nms=0.45, conf_thr=0.999),
    "eta_ineffective": dict(code="CENTER_SIZE", nms=0.45, top_k=30, conf_thr=0.3),
}


def _detection_text(kw):
    text = f"nms_param {{ nms_threshold: {kw['nms']}"
    text += f" top_k: {kw['top_k']}" if "top_k" in kw else ""
    text += " eta: 0.9 }" if kw.get("eta_case") else " }"
    text += f" code_type: {kw['code']}"
    if kw.get("encoded"):
        text += " variance_encoded_in_target: true"
    if "keep_top_k" in kw:
        text += f" keep_top_k: {kw['keep_top_k']}"
    if "conf_thr" in kw:
        text += f" confidence_threshold: {kw['conf_thr']}"
    return text


@pytest.mark.parametrize("share", [True, False], ids=["shared", "per_class"])
@pytest.mark.parametrize("case", list(NUMPY_CASES))
def test_detection_output_matches_numpy_reference(caffe, case, share):
    kw = dict(NUMPY_CASES[case], eta_case=case == "eta_ineffective")
    proto, weights = tiny_ssd(caffe, share=share, detection=_detection_text(kw))
    model = _with_outputs(convert_paths([proto, weights]), ["mbox_loc", "conf_flat", "mbox_priorbox"])
    feeds = _feeds((2, 3, 32, 32), seed=1)
    got = _both(model, feeds, ["detection_out"])
    kw.pop("eta_case")
    ref = ref_detection_output(got["mbox_loc"], got["conf_flat"], got["mbox_priorbox"], num_classes=4, share=share,
                               **kw)
    if case == "nothing_detected":  # Caffe's convention: one row of -1 per image
        np.testing.assert_array_equal(got["detection_out"], ref)
        assert got["detection_out"].shape == (1, 1, 2, 7)
        return
    # Caffe's row order exactly (scores here are distinct)
    assert got["detection_out"].shape == ref.shape
    np.testing.assert_allclose(got["detection_out"], ref, rtol=1e-4, atol=TOL)
    assert ref.shape[2] >= 7


PRIOR_CASES = {
    # OpenCV reads one min_size/max_size per layer: the several-sizes case has the numpy reference only
    "defaults": ("min_size: 4", dict(min_sizes=[4])),
    "ratios_flip_max": ("min_size: 4 max_size: 9 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 flip: true",
                        dict(min_sizes=[4], max_sizes=[9], ratios=[2, 3, 2])),
    "no_flip_clip": ("min_size: 10 aspect_ratio: 3 flip: false clip: true variance: 0.2",
                     dict(min_sizes=[10], ratios=[3], flip=False, clip=True, variance=(0.2,))),
    "steps_offset": ("min_size: 5 step_h: 3 step_w: 5 offset: 0.25 variance: 0.1 variance: 0.2 variance: 0.3 "
                     "variance: 0.4", dict(min_sizes=[5], step=(3, 5), offset=0.25, variance=(0.1, 0.2, 0.3, 0.4))),
    "img_size": ("min_size: 5 img_size: 50 step: 6", dict(min_sizes=[5], img=(50, 50), step=(6, 6))),
    "img_h_w": ("min_size: 5 img_h: 40 img_w: 60", dict(min_sizes=[5], img=(40, 60))),
}


@pytest.mark.parametrize("case", [*PRIOR_CASES, "several_sizes"])
def test_prior_box(caffe, case):
    if case == "several_sizes":
        text, kw = ("min_size: 4 min_size: 8 max_size: 6 max_size: 12 aspect_ratio: 2",
                    dict(min_sizes=[4, 8], max_sizes=[6, 12], ratios=[2]))
    else:
        text, kw = PRIOR_CASES[case]
    layers = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
              'convolution_param { num_output: 2 kernel_size: 3 stride: 2 } }\n'
              f'layer {{ name: "prior" type: "PriorBox" bottom: "conv" bottom: "data" top: "prior" '
              f'prior_box_param {{ {text} }} }}\n')
    proto, weights = caffe.write(caffe.net_text(layers, (1, 3, 15, 19)))
    model = convert_paths([proto, weights])
    got = _both(model, _feeds((1, 3, 15, 19)), ["prior"])["prior"]
    kw.setdefault("clip", False)
    np.testing.assert_allclose(got, ref_prior_box(7, 9, 15, 19, **kw), rtol=1e-6, atol=1e-7)
    if case != "several_sizes" and "variance" in text:  # OpenCV insists on variances
        # OpenCV's PriorBox clips by default: spell the fork's default out for it
        if "clip:" not in text:
            proto.write_text(proto.read_text().replace(text, text + " clip: false"))
        ref = caffe.opencv(proto, weights, _feeds((1, 3, 15, 19)), ["prior"])["prior"]
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_ssd_with_runtime_spatial_size(caffe):
    """With symbolic H and W the priors are computed from the run-time shapes; one converted
    model serves two image sizes, each matching OpenCV run at that size."""
    proto, weights = tiny_ssd(caffe, detection=OPENCV_CASES["center_size"])
    model = convert_paths([proto, weights], ConvertOptions(input_shapes={"data": ["N", 3, "H", "W"]}))
    for shape in [(1, 3, 32, 32), (2, 3, 48, 40)]:
        feeds = _feeds(shape, seed=shape[2])
        got = _both(model, feeds, ["detection_out"])
        ref = caffe.opencv(proto, weights, feeds, ["detection_out"])
        assert match_rows(got["detection_out"], ref["detection_out"]) >= 10


@pytest.mark.parametrize("name", ["mobilenet_ssd", "face_ssd"])
def test_zoo_ssd_matches_opencv(zoo, name):
    """The zoo's MobileNet-SSD and res10-style face detector (random weights): the same
    detections as OpenCV, identical on both backends."""
    proto, weights = zoo(name)
    model = convert_paths([proto, weights])
    feeds = {"data": np.random.default_rng(0).uniform(-1, 1, (1, 3, 300, 300)).astype(np.float32)}
    got = _both(model, feeds, ["detection_out"])["detection_out"]
    ref = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    ref.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ref.enableFusion(False)
    ref.enableWinograd(False)
    ref.setInput(feeds["data"], "data")
    assert match_rows(got, np.asarray(ref.forward("detection_out"))) >= 20


def test_adaptive_nms_is_refused(caffe):
    from portanet.errors import ConversionError

    proto, weights = tiny_ssd(caffe, detection="nms_param { nms_threshold: 0.7 eta: 0.9 } code_type: CENTER_SIZE")
    with pytest.raises(ConversionError, match="adaptive NMS"):
        convert_paths([proto, weights])
