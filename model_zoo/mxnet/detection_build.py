"""Build the MXNet detection-op references. Run BY the mxnet side environment:

    .venv-mxnet/bin/python model_zoo/mxnet/detection_build.py OUT_DIR

One small symbol per case (contrib detection ops and the generic ops detector
post-processing uses), with inputs shaped for the op (boxes, ROIs, indices). Per case
``<name>``: ``<name>-symbol.json``, ``<name>-0000.params`` (no weights), ``<name>-input.npz``
and ``<name>-ref.npz`` (MXNet's outputs by ``list_outputs()`` name); ``manifest.json`` lists them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MXNET_MKLDNN_ENABLED", "0")

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

S = mx.sym


def _boxes(rng, shape):
    """Corner boxes (..., 4) with positive extents."""
    xy = rng.uniform(0, 1, shape[:-1] + (2,))
    wh = rng.uniform(0.05, 0.5, shape[:-1] + (2,))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _rois(rng, r, batch, size):
    x1 = rng.uniform(0, size * 0.6, r)
    y1 = rng.uniform(0, size * 0.6, r)
    x2 = x1 + rng.uniform(1, size * 0.5, r)
    y2 = y1 + rng.uniform(1, size * 0.5, r)
    b = rng.integers(0, batch, r)
    return np.stack([b, x1, y1, x2, y2], 1).astype(np.float32)


def cases(rng):
    d = S.var("data")
    x4 = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    yield "cmp_scalar", S.Group([d > 0.2, d < -0.1, S.round(d) == 0.0, d != 0.5, d >= 0.1, d <= 0.3]), {"data": x4}
    b = S.var("b")
    yield "cmp_broadcast", S.Group([S.broadcast_equal(S.round(d), S.round(b), name="eq"),
                                    S.broadcast_greater(d, b, name="gt"),
                                    S.broadcast_lesser_equal(d, b, name="le")]), \
        {"data": x4, "b": rng.standard_normal((1, 3, 1, 7)).astype(np.float32)}
    a = rng.uniform(-5, 5, (3, 8)).astype(np.float32)
    m = rng.choice([-2.5, -1.0, 0.0, 1.5, 3.0], (3, 8)).astype(np.float32)
    yield "broadcast_mod", S.broadcast_mod(d, b, name="mod"), {"data": a, "b": m}
    yield "where_same_shape", S.where(d > 0.0, d, b * 2.0, name="w"), \
        {"data": x4, "b": rng.standard_normal(x4.shape).astype(np.float32)}
    yield "where_rows", S.where(S.var("c"), d, b, name="w"), \
        {"c": np.asarray([1, 0, 1, 0], np.float32), "data": rng.standard_normal((4, 3)).astype(np.float32),
         "b": rng.standard_normal((4, 3)).astype(np.float32)}
    yield "arange", S.broadcast_add(d, S.reshape(S.arange(start=1.0, stop=4.0, step=0.5, repeat=2), shape=(1, -1)),
                                    name="ar"), {"data": rng.standard_normal((2, 12)).astype(np.float32)}
    yield "slice_like", S.Group([S.slice_like(d, b, name="sl_all"), S.slice_like(d, b, axes=(1, -1), name="sl_axes")]), \
        {"data": x4, "b": np.zeros((1, 2, 4, 5), np.float32)}
    yield "repeat", S.Group([S.repeat(d, repeats=3, axis=1, name="rep1"), S.repeat(d, repeats=2, name="rep_flat")]), \
        {"data": rng.standard_normal((2, 3, 2)).astype(np.float32)}
    yield "tile", S.Group([S.tile(d, reps=(2, 1, 3), name="t_same"), S.tile(d, reps=(2,), name="t_short"),
                           S.tile(d, reps=(2, 1, 1, 2), name="t_long")]), \
        {"data": rng.standard_normal((2, 3, 2)).astype(np.float32)}
    xv = rng.permutation(40).astype(np.float32).reshape(2, 4, 5)  # no ties
    yield "topk", S.Group([S.topk(d, k=3, ret_typ="value", name="tv"), S.topk(d, k=2, axis=1, name="ti"),
                           S.topk(d, k=2, ret_typ="mask", name="tm"), S.topk(d, k=3, is_ascend=True, ret_typ="value",
                                                                            name="ta")]), {"data": xv}
    yield "topk_both", S.topk(d, k=2, ret_typ="both", name="tb"), {"data": xv}
    yield "gather_nd", S.gather_nd(d, S.var("idx"), name="gnd"), \
        {"data": x4, "idx": np.asarray([[0, 1, 1], [2, 0, 1]], np.float32)}
    yield "broadcast_axis", S.broadcast_axis(d, axis=(0, 2), size=(3, 4), name="ba"), \
        {"data": rng.standard_normal((1, 2, 1)).astype(np.float32)}
    yield "broadcast_like", S.Group([S.broadcast_like(d, b, name="bl"),
                                     S.broadcast_like(d, b, lhs_axes=(0,), rhs_axes=(2,), name="bl_axes")]), \
        {"data": rng.standard_normal((1, 3, 1)).astype(np.float32), "b": np.zeros((4, 3, 5), np.float32)}
    yield "shape_reverse", S.Group([S.shape_array(d, name="shp"), S.reverse(d, axis=(1, 3), name="rev")]), {"data": x4}
    feat = rng.standard_normal((2, 4, 12, 10)).astype(np.float32)
    yield "roi_pooling", S.ROIPooling(d, S.var("rois"), pooled_size=(3, 2), spatial_scale=0.5, name="roip"), \
        {"data": feat, "rois": _rois(rng, 6, 2, 20)}
    for aligned in (False, True):
        for ratio in (-1, 2):
            yield (f"roi_align_{'aligned' if aligned else 'plain'}_{ratio}",
                   S.contrib.ROIAlign(d, S.var("rois"), pooled_size=(3, 4), spatial_scale=0.5, sample_ratio=ratio,
                                      aligned=aligned, name="roia"),
                   {"data": feat, "rois": _rois(rng, 5, 2, 20)})
    yield "bilinear_resize", S.Group([S.contrib.BilinearResize2D(d, height=9, width=14, name="up"),
                                      S.contrib.BilinearResize2D(d, height=4, width=5, align_corners=False,
                                                                 name="down")]), {"data": x4}
    yield "adaptive_pool", S.Group([S.contrib.AdaptiveAvgPooling2D(d, output_size=(3, 5), name="ap_uneven"),
                                    S.contrib.AdaptiveAvgPooling2D(d, output_size=1, name="ap_global"),
                                    S.contrib.AdaptiveAvgPooling2D(d, output_size=(2, 7), name="ap_even")]), \
        {"data": rng.standard_normal((2, 3, 6, 7)).astype(np.float32)}
    anchors_c = _boxes(rng, (1, 12, 4))
    yield "box_decode_corner", S.contrib.box_decode(d, S.var("anchors"), std0=0.1, std1=0.1, std2=0.2, std3=0.2,
                                                    format="corner", name="dec"), \
        {"data": rng.standard_normal((2, 12, 4)).astype(np.float32), "anchors": anchors_c}
    center = np.concatenate([anchors_c[..., :2], anchors_c[..., 2:] - anchors_c[..., :2]], -1)
    yield "box_decode_center_clip", S.contrib.box_decode(d, S.var("anchors"), clip=0.5, format="center", name="dec"), \
        {"data": rng.standard_normal((2, 12, 4)).astype(np.float32), "anchors": center}
    yield "multibox_prior", S.contrib.MultiBoxPrior(d, sizes=(0.3, 0.5), ratios=(1, 2, 0.5), name="prior"), \
        {"data": rng.standard_normal((1, 3, 5, 6)).astype(np.float32)}
    yield "multibox_prior_steps_clip", S.contrib.MultiBoxPrior(d, sizes=(0.6,), ratios=(1, 3), steps=(0.2, 0.1),
                                                               offsets=(0.4, 0.6), clip=True, name="prior"), \
        {"data": rng.standard_normal((1, 3, 4, 8)).astype(np.float32)}


def nms_cases(rng):
    d = S.var("data")

    def rows(shape, ids=True):
        n = shape[-2]
        boxes = _boxes(rng, shape[:-1] + (4,))
        boxes = boxes * 10  # pixel-like coordinates
        score = rng.permutation(np.prod(shape[:-1])).reshape(shape[:-1] + (1,)) / np.prod(shape[:-1])
        cols = [rng.choice([0, 1, 2, -1], shape[:-1] + (1,)).astype(np.float32)] if ids else []
        extra = [rng.standard_normal(shape[:-1] + (shape[-1] - 5 - len(cols),))] if shape[-1] > 5 + len(cols) else []
        del n
        return np.concatenate([*cols, score, boxes, *extra], -1).astype(np.float32)

    yield "box_nms_per_class", S.contrib.box_nms(d, overlap_thresh=0.3, valid_thresh=0.1, topk=20, coord_start=2,
                                                 score_index=1, id_index=0, name="nms"), {"data": rows((2, 40, 6))}
    yield "box_nms_force_background", S.contrib.box_nms(d, overlap_thresh=0.4, valid_thresh=0.05, coord_start=2,
                                                        score_index=1, id_index=0, background_id=0,
                                                        force_suppress=True, name="nms"), {"data": rows((2, 40, 6))}
    center = rows((2, 3, 15, 5), ids=False)
    center[..., 3:5] -= center[..., 1:3]  # (x, y, w, h) -> centre format below
    center[..., 1:3] += center[..., 3:5] / 2
    yield "box_nms_center_batch", S.contrib.box_nms(d, overlap_thresh=0.5, coord_start=1, score_index=0,
                                                    in_format="center", out_format="corner", name="nms"), \
        {"data": center}


def multibox_cases(rng):
    cls, loc, anc = S.var("cls_prob"), S.var("loc_pred"), S.var("anchor")
    n_anchor, n_cls = 60, 4
    anchors = _boxes(rng, (1, n_anchor, 4)) * 0.8
    logits = rng.standard_normal((2, n_cls, n_anchor)) * 2
    prob = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    feeds = {"cls_prob": prob, "loc_pred": rng.standard_normal((2, n_anchor * 4)).astype(np.float32),
             "anchor": anchors}
    yield "multibox_detection", S.contrib.MultiBoxDetection(cls, loc, anc, threshold=0.3, nms_threshold=0.45,
                                                            name="det"), feeds
    yield "multibox_detection_force_topk", S.contrib.MultiBoxDetection(
        cls, loc, anc, threshold=0.25, nms_threshold=0.3, force_suppress=True, nms_topk=15, clip=False,
        variances=(0.2, 0.2, 0.1, 0.1), name="det"), feeds


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    manifest = []
    for name, sym, feeds in [*cases(rng), *nms_cases(rng), *multibox_cases(rng)]:
        prefix = str(out / name)
        mx.model.save_checkpoint(prefix, 0, sym, {}, {})
        sym = mx.sym.load(prefix + "-symbol.json")
        args = {k: mx.nd.array(v) for k, v in feeds.items()}
        exe = sym.bind(mx.cpu(), args, grad_req="null")
        outs = exe.forward(is_train=False)
        ref = {k: o.asnumpy() for k, o in zip(sym.list_outputs(), outs)}
        np.savez(out / f"{name}-input.npz", **feeds)
        np.savez(out / f"{name}-ref.npz", **ref)
        manifest.append({"name": name, "inputs": {k: list(v.shape) for k, v in feeds.items()}})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
