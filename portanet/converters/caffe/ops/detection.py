"""SSD detection heads (the SSD fork's layers): PriorBox and DetectionOutput.

``PriorBox`` is folded to a constant when the feature map and image sizes are static (the
usual deploy net) and computed from the run-time shapes otherwise, with the fork's exact
formulas (``center = (w + offset) * step``, box corners divided by the image size, the
square ``sqrt(min_size * max_size)`` prior after each ``min_size`` one, then the aspect ratios).

``DetectionOutput`` is lowered to standard ONNX ops with the fork's semantics:

1. decode the location predictions against the priors (CORNER / CENTER_SIZE / CORNER_SIZE,
   variance in the prior blob or encoded in the target);
2. per image and non-background class: keep the ``top_k`` highest scores above
   ``confidence_threshold`` (ties: the lower prior index first, as Caffe's stable sort), then
   greedy NMS with ``nms_threshold`` over them (``NonMaxSuppression`` on rank scores, so the
   visiting order is exactly Caffe's whatever the score ties);
3. per image: at most ``keep_top_k`` detections, the highest scores across classes;
4. rows ``[image_id, label, score, xmin, ymin, xmax, ymax]`` as ``[1, 1, R, 7]``, ordered by
   image, then label, then descending score — Caffe's order. With no detection at all Caffe
   writes one row per image of ``-1`` (image id kept); so does the lowering.

One difference remains by construction: a decoded box turned inside out (xmax < xmin, possible
only with CORNER codes and offsets larger than the prior) has zero area in Caffe's overlap
test, while ``NonMaxSuppression`` orders each box's corners first. Real detectors' offsets
never do that; CENTER_SIZE boxes cannot.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from portanet.converters.caffe.context import Ctx, Out, prod
from portanet.converters.caffe.ops.table import HANDLERS
from portanet.errors import ConversionError

CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3


# ------------------------------------------------------------------------------ PriorBox
def prior_sizes(p) -> list[tuple[float, float]]:
    """(box width, box height) in pixels of each prior at one location, in Caffe's order."""
    mins = [float(m) for m in p.min_size]
    maxs = [float(m) for m in p.max_size]
    if p.width or p.height or p.offset_h or p.offset_w:
        raise ConversionError("OpenCV's width/height/offset_h/offset_w PriorBox extensions are not supported")
    if not mins:
        raise ConversionError("min_size must be set")
    if any(m <= 0 for m in mins):
        raise ConversionError(f"min_size must be positive, received {mins}")
    if maxs and len(maxs) != len(mins):
        raise ConversionError(f"expected one max_size per min_size ({len(mins)}), received {len(maxs)}")
    for lo, hi in zip(mins, maxs):
        if hi <= lo:
            raise ConversionError(f"max_size {hi} must be greater than min_size {lo}")
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if any(abs(ar - r) < 1e-6 for r in ratios):
            continue
        ratios.append(float(ar))
        if p.flip:
            ratios.append(1.0 / float(ar))
    sizes = []
    for i, lo in enumerate(mins):
        sizes.append((lo, lo))
        if maxs:
            side = math.sqrt(lo * maxs[i])
            sizes.append((side, side))
        for ar in ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            sizes.append((lo * math.sqrt(ar), lo / math.sqrt(ar)))
    return sizes


def prior_variances(p) -> list[float]:
    var = [float(v) for v in p.variance]
    if len(var) > 1 and len(var) != 4:
        raise ConversionError(f"expected 1 or 4 variances, received {len(var)}")
    if any(v <= 0 for v in var):
        raise ConversionError(f"variances must be positive, received {var}")
    if not var:
        return [0.1] * 4
    return var * 4 if len(var) == 1 else var


def _img_and_steps(p, layer_hw: tuple[int, int] | None, image_hw: tuple[int, int] | None):
    """(img_h, img_w, step_h, step_w); None where it depends on run-time shapes."""
    if p.HasField("img_size") and (p.HasField("img_h") or p.HasField("img_w")):
        raise ConversionError("sets both img_size and img_h/img_w")
    if p.HasField("step") and (p.HasField("step_h") or p.HasField("step_w")):
        raise ConversionError("sets both step and step_h/step_w")
    if p.HasField("img_size"):
        img_h = img_w = float(p.img_size)
    elif p.img_h and p.img_w:
        img_h, img_w = float(p.img_h), float(p.img_w)
    else:
        img_h, img_w = (float(image_hw[0]), float(image_hw[1])) if image_hw else (None, None)
    if p.HasField("step"):
        step_h = step_w = float(p.step)
    elif p.step_h and p.step_w:
        step_h, step_w = float(p.step_h), float(p.step_w)
    elif layer_hw and img_h is not None:
        # Caffe: static_cast<float>(img_width) / layer_width
        step_h = float(np.float32(img_h) / np.float32(layer_hw[0]))
        step_w = float(np.float32(img_w) / np.float32(layer_hw[1]))
    else:
        step_h = step_w = None
    return img_h, img_w, step_h, step_w


def prior_boxes(p, layer_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """PriorBox's output (1, 2, H*W*num_priors*4) for static sizes (the fork's loop order)."""
    h, w = layer_hw
    img_h, img_w, step_h, step_w = _img_and_steps(p, layer_hw, image_hw)
    sizes = np.asarray(prior_sizes(p), dtype=np.float64)  # (K, 2): width, height
    # centres are float in Caffe: (w + offset) * step, rounded to float
    cx = (np.arange(w, dtype=np.float32) + np.float32(p.offset)) * np.float32(step_w)
    cy = (np.arange(h, dtype=np.float32) + np.float32(p.offset)) * np.float32(step_h)
    cx = cx.astype(np.float64)[None, :, None]  # (1, W, 1)
    cy = cy.astype(np.float64)[:, None, None]  # (H, 1, 1)
    bw, bh = sizes[None, None, :, 0], sizes[None, None, :, 1]  # (1, 1, K)
    boxes = np.stack(
        np.broadcast_arrays((cx - bw / 2.0) / img_w, (cy - bh / 2.0) / img_h,
                            (cx + bw / 2.0) / img_w, (cy + bh / 2.0) / img_h),
        axis=-1,
    ).astype(np.float32)  # (H, W, K, 4), each coordinate rounded once as in Caffe
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.tile(np.asarray(prior_variances(p), dtype=np.float32), boxes.size // 4)
    return np.stack([boxes.reshape(-1), var]).reshape(1, 2, -1)


def _dynamic_prior_boxes(ctx: Ctx) -> ir.Value:
    """PriorBox computed from the run-time feature-map (and image) shapes."""
    p = ctx.p.prior_box_param
    sizes = np.asarray(prior_sizes(p), dtype=np.float32)  # (K, 2)
    fixed_img = p.HasField("img_size") or (p.img_h and p.img_w)
    fixed_step = p.HasField("step") or (p.step_h and p.step_w)
    if not fixed_img and len(ctx.inputs) < 2:
        raise ConversionError("expected the image as bottom 1 (or img_size / img_h and img_w)")
    img_h, img_w, step_h, step_w = _img_and_steps(p, None, None)

    def hw(v: ir.Value) -> tuple[ir.Value, ir.Value]:
        shape = ctx.op("Cast", [ctx.op("Shape", [v], {"start": 2, "end": 4})], {"to": ir.DataType.FLOAT})
        return (ctx.op("Gather", [shape, ctx.ints(0)], {"axis": 0}),
                ctx.op("Gather", [shape, ctx.ints(1)], {"axis": 0}))

    lh, lw = hw(ctx.inputs[0])
    if fixed_img:
        ih, iw = ctx.fconst(np.float32(img_h)), ctx.fconst(np.float32(img_w))
    else:
        ih, iw = hw(ctx.inputs[1])
    if fixed_step:
        sh, sw = ctx.fconst(np.float32(step_h)), ctx.fconst(np.float32(step_w))
    else:
        sh, sw = ctx.op("Div", [ih, lh]), ctx.op("Div", [iw, lw])
    zero, one, off = ctx.fconst(np.float32(0)), ctx.fconst(np.float32(1)), ctx.fconst(np.float32(p.offset))
    # centres (H, 1, 1) and (1, W, 1)
    cx = ctx.op("Mul", [ctx.op("Add", [ctx.op("Range", [zero, lw, one]), off]), sw])
    cy = ctx.op("Mul", [ctx.op("Add", [ctx.op("Range", [zero, lh, one]), off]), sh])
    cx = ctx.reshape(cx, [1, -1, 1])
    cy = ctx.reshape(cy, [-1, 1, 1])
    half_w = ctx.fconst((sizes[:, 0] / 2).reshape(1, 1, -1))
    half_h = ctx.fconst((sizes[:, 1] / 2).reshape(1, 1, -1))
    corners = [
        ctx.op("Div", [ctx.op("Sub", [cx, half_w]), iw]),
        ctx.op("Div", [ctx.op("Sub", [cy, half_h]), ih]),
        ctx.op("Div", [ctx.op("Add", [cx, half_w]), iw]),
        ctx.op("Div", [ctx.op("Add", [cy, half_h]), ih]),
    ]
    # broadcast each to (H, W, K) and stack on a last axis of 4
    full = ctx.op("Add", [ctx.op("Add", [cx, cy]), ctx.fconst(np.zeros((1, 1, len(sizes)), np.float32))])
    zeros = ctx.op("Mul", [full, zero])
    stacked = [ctx.op("Unsqueeze", [ctx.op("Add", [c, zeros]), ctx.ints([3])]) for c in corners]
    boxes = ctx.op("Concat", stacked, {"axis": 3})  # (H, W, K, 4)
    if p.clip:
        boxes = ctx.op("Clip", [boxes, zero, one])
    flat = ctx.reshape(boxes, [1, -1])  # (1, H*W*K*4)
    var = ctx.fconst(np.asarray(prior_variances(p), np.float32).reshape(1, 1, 1, 4))
    var = ctx.reshape(ctx.op("Expand", [var, ctx.op("Shape", [boxes])]), [1, -1])
    return ctx.reshape(ctx.op("Concat", [flat, var], {"axis": 0}), [1, 2, -1])


@HANDLERS.register("PriorBox")
def prior_box(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(1, 2)
    p = ctx.p.prior_box_param
    if len(ctx.shape) != 4:
        raise ConversionError(f"expected a 4-D feature map as bottom 0, received {ctx.shape}")
    k = len(prior_sizes(p))
    layer_hw = (ctx.shape[2], ctx.shape[3])
    image_hw = (ctx.shapes[1][2], ctx.shapes[1][3]) if len(ctx.inputs) > 1 and len(ctx.shapes[1]) == 4 else None
    out_shape = [1, 2, layer_hw[0] * layer_hw[1] * k * 4]
    fixed_img = p.HasField("img_size") or (p.img_h and p.img_w)
    if image_hw is None and not fixed_img:
        raise ConversionError("expected the image as bottom 1 (or img_size / img_h and img_w)")
    if ctx.extra.get("dynamic_spatial"):
        return [Out(_dynamic_prior_boxes(ctx), out_shape)]
    return [Out(ctx.fconst(prior_boxes(p, layer_hw, image_hw or (0, 0))), out_shape)]


# ------------------------------------------------------------------------ DetectionOutput
def _decode(ctx: Ctx, loc: ir.Value, prior: ir.Value, var: ir.Value, code: int, encoded: bool) -> ir.Value:
    """Decoded boxes (..., 4) from location predictions ``loc`` (..., 4) and priors/variances
    (..., 4) broadcasting against it, with Caffe's operation order (float32)."""

    def comp(v: ir.Value, i: int) -> ir.Value:
        return ctx.op("Slice", [v, ctx.ints([i]), ctx.ints([i + 1]), ctx.ints([-1])])

    lx0, ly0, lx1, ly1 = (comp(loc, i) for i in range(4))
    px0, py0, px1, py1 = (comp(prior, i) for i in range(4))
    v = [comp(var, i) for i in range(4)]

    def scaled(term: ir.Value, i: int) -> ir.Value:
        return term if encoded else ctx.op("Mul", [v[i], term])  # variance * prediction

    if code == CORNER:
        parts = [ctx.op("Add", [px0, scaled(lx0, 0)]), ctx.op("Add", [py0, scaled(ly0, 1)]),
                 ctx.op("Add", [px1, scaled(lx1, 2)]), ctx.op("Add", [py1, scaled(ly1, 3)])]
    elif code == CORNER_SIZE:
        pw, ph = ctx.op("Sub", [px1, px0]), ctx.op("Sub", [py1, py0])
        parts = [ctx.op("Add", [px0, ctx.op("Mul", [scaled(lx0, 0), pw])]),
                 ctx.op("Add", [py0, ctx.op("Mul", [scaled(ly0, 1), ph])]),
                 ctx.op("Add", [px1, ctx.op("Mul", [scaled(lx1, 2), pw])]),
                 ctx.op("Add", [py1, ctx.op("Mul", [scaled(ly1, 3), ph])])]
    elif code == CENTER_SIZE:
        half = ctx.fconst(np.float32(0.5))
        pw, ph = ctx.op("Sub", [px1, px0]), ctx.op("Sub", [py1, py0])
        pcx = ctx.op("Mul", [ctx.op("Add", [px0, px1]), half])
        pcy = ctx.op("Mul", [ctx.op("Add", [py0, py1]), half])
        cx = ctx.op("Add", [ctx.op("Mul", [scaled(lx0, 0), pw]), pcx])
        cy = ctx.op("Add", [ctx.op("Mul", [scaled(ly0, 1), ph]), pcy])
        bw = ctx.op("Mul", [ctx.op("Exp", [scaled(lx1, 2)]), pw])
        bh = ctx.op("Mul", [ctx.op("Exp", [scaled(ly1, 3)]), ph])
        hw, hh = ctx.op("Mul", [bw, half]), ctx.op("Mul", [bh, half])
        parts = [ctx.op("Sub", [cx, hw]), ctx.op("Sub", [cy, hh]), ctx.op("Add", [cx, hw]), ctx.op("Add", [cy, hh])]
    else:
        raise ConversionError(f"unknown code_type {code}")
    return ctx.op("Concat", parts, {"axis": -1})


@HANDLERS.register("DetectionOutput")
def detection_output(ctx: Ctx) -> list[Out]:
    ctx.expect_bottoms(3)
    p = ctx.p.detection_output_param
    if not p.HasField("num_classes") or p.num_classes < 1:
        raise ConversionError("num_classes must be set")
    if not p.normalized_bbox:
        raise ConversionError("normalized_bbox: false (pixel boxes) is not supported")
    n_cls, share, bg = int(p.num_classes), bool(p.share_location), int(p.background_label_id)
    nms = p.nms_param
    thr = float(nms.nms_threshold)
    if not 0.0 <= thr <= 1.0:
        raise ConversionError(f"nms_threshold must lie in [0, 1], received {thr}")
    if nms.eta != 1.0 and not (0.0 < nms.eta <= 1.0):
        raise ConversionError(f"eta must lie in (0, 1], received {nms.eta}")
    if nms.eta < 1.0 and thr > 0.5:
        # Caffe lowers the threshold (times eta) after each kept box while it exceeds 0.5;
        # with nms_threshold <= 0.5 that never happens and eta has no effect
        raise ConversionError(
            f"adaptive NMS (eta {nms.eta:g} < 1 with nms_threshold {thr:g} > 0.5) has no ONNX equivalent"
        )
    loc_shape, conf_shape, prior_shape = ctx.shapes
    if len(prior_shape) < 3 or prior_shape[-2] != 2 or prior_shape[-1] % 4:
        raise ConversionError(f"expected priors of shape (1, 2, num_priors*4) as bottom 2, received {prior_shape}")
    n_pri = prior_shape[-1] // 4
    n_loc = 1 if share else n_cls
    if prod(loc_shape[1:]) != n_pri * n_loc * 4:
        raise ConversionError(
            f"bottom 0 (locations) holds {prod(loc_shape[1:])} values per image, expected "
            f"{n_pri} priors x {n_loc} x 4 = {n_pri * n_loc * 4}"
        )
    if prod(conf_shape[1:]) != n_pri * n_cls:
        raise ConversionError(
            f"bottom 1 (confidences) holds {prod(conf_shape[1:])} values per image, expected "
            f"{n_pri} priors x {n_cls} classes = {n_pri * n_cls}"
        )
    classes = [c for c in range(n_cls) if c != bg]
    if not classes:
        raise ConversionError("no class besides the background")
    nc = len(classes)
    top_k = -1 if not nms.HasField("top_k") else int(nms.top_k)
    loc, conf, prior = ctx.inputs
    # with run-time spatial sizes the number of priors P (and so K) is only known at run time
    dynamic = bool(ctx.extra.get("dynamic_spatial"))

    # priors and variances (P, 4); locations (N, P, L, 4)
    pri = ctx.reshape(prior, [2, -1, 4])
    boxes_p = ctx.op("Gather", [pri, ctx.ints(0)], {"axis": 0})
    var_p = ctx.op("Gather", [pri, ctx.ints(1)], {"axis": 0})
    loc4 = ctx.reshape(loc, [0, -1, n_loc, 4])
    decoded = _decode(ctx, loc4, ctx.reshape(boxes_p, [-1, 1, 4]), ctx.reshape(var_p, [-1, 1, 4]),
                      int(p.code_type), bool(p.variance_encoded_in_target))  # (N, P, L, 4)
    if p.clip:  # OpenCV's extension: clip the decoded boxes before NMS
        decoded = ctx.op("Clip", [decoded, ctx.fconst(np.float32(0)), ctx.fconst(np.float32(1))])
    # one NMS problem per (image, class): B = N * nc rows of P boxes and scores
    by_class = ctx.op("Transpose", [decoded], {"perm": [0, 2, 1, 3]})  # (N, L, P, 4)
    if share:
        per_class = ctx.op("Tile", [by_class, ctx.ints([1, nc, 1, 1])])  # (N, nc, P, 4)
    else:
        per_class = ctx.op("Gather", [by_class, ctx.ints(classes)], {"axis": 1})
    boxes = ctx.reshape(ctx.op("Flatten", [per_class], {"axis": 2}), [0, -1, 4])  # (B, P, 4)
    scores = ctx.op("Gather", [ctx.op("Transpose", [ctx.reshape(conf, [0, -1, n_cls])], {"perm": [0, 2, 1]}),
                               ctx.ints(classes)], {"axis": 1})
    scores = ctx.op("Flatten", [scores], {"axis": 2})  # (B, P)
    # Caffe's GetMaxScoreIndex: the top_k best (stable: lower index first on ties)
    if dynamic:
        n_p = ctx.op("Shape", [scores], {"start": 1})
        k_t = n_p if top_k < 0 else ctx.op("Min", [n_p, ctx.ints([top_k])])
    else:
        k_static = n_pri if top_k < 0 else min(top_k, n_pri)
        k_t = ctx.ints([k_static])
    top_s, top_i = ctx.op("TopK", [scores, k_t], {"axis": 1, "largest": 1, "sorted": 1}, outputs=2)
    top_b = ctx.op("GatherND", [boxes, ctx.op("Unsqueeze", [top_i, ctx.ints([2])])], {"batch_dims": 1})  # (B, K, 4)
    # NMS visits candidates by rank (K, K-1, ..., 1); those at or below the threshold get 0
    if dynamic:
        k_f = ctx.op("Cast", [ctx.op("Squeeze", [k_t, ctx.ints([0])])], {"to": ir.DataType.FLOAT})
        rank = ctx.op("Range", [k_f, ctx.fconst(np.float32(0)), ctx.fconst(np.float32(-1))])
        rank = ctx.op("Unsqueeze", [rank, ctx.ints([0])])
    else:
        rank = ctx.fconst(np.arange(k_static, 0, -1, dtype=np.float32).reshape(1, k_static))
    if p.HasField("confidence_threshold"):
        keep = ctx.op("Greater", [top_s, ctx.fconst(np.float32(p.confidence_threshold))])
        rank = ctx.op("Where", [keep, rank, ctx.fconst(np.float32(0))])
    else:
        rank = ctx.op("Add", [rank, ctx.op("Mul", [top_s, ctx.fconst(np.float32(0))])])
    selected = ctx.op("NonMaxSuppression", [
        top_b, ctx.op("Unsqueeze", [rank, ctx.ints([1])]), k_t,
        ctx.fconst(np.asarray([thr], np.float32)), ctx.fconst(np.asarray([0.5], np.float32)),
    ])  # (S, 3): (b, 0, position in the top-k list)
    # dense (B, K) mask of the kept candidates, then per image (N, nc*K): flat = class*K + position
    zeros_bk = ctx.op("ConstantOfShape", [ctx.op("Shape", [top_s])], {"value": ir.tensor(np.zeros(1, np.float32))})
    ones_s = ctx.op("ConstantOfShape", [ctx.op("Shape", [selected], {"end": 1})],
                    {"value": ir.tensor(np.ones(1, np.float32))})
    where = ctx.op("Gather", [selected, ctx.ints([0, 2])], {"axis": 1})
    per_image = ctx.op("Concat", [ctx.ints([-1, nc]), k_t], {"axis": 0})
    mask = ctx.op("Flatten", [ctx.op("Reshape", [ctx.op("ScatterND", [zeros_bk, where, ones_s]), per_image])],
                  {"axis": 1})  # (N, nc*K)
    flat_s = ctx.op("Flatten", [ctx.op("Reshape", [top_s, per_image])], {"axis": 1})
    nck = ctx.op("Shape", [flat_s], {"start": 1})  # [nc*K]
    if p.keep_top_k >= 0:
        keep_n = int(p.keep_top_k)
        zeros_nf = ctx.op("Mul", [mask, ctx.fconst(np.float32(0))])
        if keep_n == 0:
            mask = zeros_nf
        else:
            masked = ctx.op("Where", [ctx.op("Greater", [mask, ctx.fconst(np.float32(0.5))]), flat_s,
                                      ctx.fconst(np.float32(-np.inf))])
            k_keep = ctx.op("Min", [nck, ctx.ints([keep_n])])
            best_s, best_i = ctx.op("TopK", [masked, k_keep], {"axis": 1}, outputs=2)
            real = ctx.op("Cast", [ctx.op("Greater", [best_s, ctx.fconst(np.float32(-np.inf))])],
                          {"to": ir.DataType.FLOAT})
            mask = ctx.op("ScatterElements", [zeros_nf, best_i, real], {"axis": 1})
    nz = ctx.op("NonZero", [mask])  # (2, R): image, flat; row-major = Caffe's order
    img = ctx.op("Gather", [nz, ctx.ints(0)], {"axis": 0})
    flat = ctx.op("Gather", [nz, ctx.ints(1)], {"axis": 0})
    cls = ctx.op("Div", [flat, ctx.op("Squeeze", [k_t, ctx.ints([0])])])
    gidx = ctx.op("Add", [ctx.op("Mul", [img, ctx.op("Squeeze", [nck, ctx.ints([0])])]), flat])  # into (N*nc*K)
    score = ctx.op("Gather", [ctx.reshape(top_s, [-1]), gidx], {"axis": 0})
    box = ctx.op("Gather", [ctx.reshape(top_b, [-1, 4]), gidx], {"axis": 0})  # (R, 4)
    label = ctx.op("Gather", [ctx.fconst(np.asarray(classes, np.float32)), cls], {"axis": 0})
    cols = [ctx.op("Cast", [img], {"to": ir.DataType.FLOAT}), label, score]
    rows = ctx.op("Concat", [*(ctx.op("Unsqueeze", [c, ctx.ints([1])]) for c in cols), box], {"axis": 1})
    # no detection at all: one row [i, -1, ..., -1] per image (Caffe's convention)
    n_img = ctx.op("Shape", [conf], {"end": 1})
    ids = ctx.op("Range", [ctx.fconst(np.float32(0)), ctx.op("Cast", [ctx.op("Squeeze", [n_img, ctx.ints([0])])],
                                                                     {"to": ir.DataType.FLOAT}),
                           ctx.fconst(np.float32(1))])
    fill = ctx.op("Expand", [ctx.fconst(np.full((1, 6), -1.0, np.float32)),
                             ctx.op("Concat", [n_img, ctx.ints([6])], {"axis": 0})])
    fallback = ctx.op("Concat", [ctx.op("Unsqueeze", [ids, ctx.ints([1])]), fill], {"axis": 1})  # (N, 7)
    none = ctx.op("Cast", [ctx.op("Equal", [ctx.op("Shape", [nz], {"start": 1}), ctx.ints([0])])],
                  {"to": ir.DataType.INT64})
    fallback = ctx.op("Slice", [fallback, ctx.ints([0]), ctx.op("Mul", [n_img, none]), ctx.ints([0])])
    out = ctx.reshape(ctx.op("Concat", [rows, fallback], {"axis": 0}), [1, 1, -1, 7])
    bound = p.keep_top_k if p.keep_top_k >= 0 else nc * (n_pri if top_k < 0 else min(top_k, n_pri))
    return [Out(out, [1, 1, int(bound), 7])]
