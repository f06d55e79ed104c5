"""Detection and indexing ops: NonMaxSuppression, GatherND, ScatterND, ScatterElements,
NonZero, OneHot, MaxRoiPool, RoiAlign.

Each follows ONNX Runtime's CPU kernel to the bit where ONNX leaves freedom, so that the two
backends give identical results:

* NonMaxSuppression visits candidates by descending score, the lower box index first on ties;
  a candidate is dropped when its IoU with an already selected box of the same (batch, class)
  exceeds the threshold, with ONNX Runtime's float32 IoU (corners ordered per axis, boxes of
  zero area never suppress); ``score_threshold`` keeps scores strictly above it; rows come out
  by batch, then class, then selection order.
* MaxRoiPool rounds ROI corners half away from zero (C's ``round``), as Caffe and ONNX Runtime.
* RoiAlign samples with ONNX Runtime's bilinear rule; ``max`` mode takes the maximum of the
  weighted corner values, as ONNX Runtime does.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register


# -- NonMaxSuppression --------------------------------------------------------------------------
def _corners(boxes: torch.Tensor, center_point_box: int) -> tuple[torch.Tensor, ...]:
    """(x_min, y_min, x_max, y_max) of (..., 4) boxes as ONNX Runtime computes them."""
    if center_point_box:
        xc, yc, w, h = boxes.unbind(-1)
        hw, hh = w / 2, h / 2
        return xc - hw, yc - hh, xc + hw, yc + hh
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.minimum(x1, x2), torch.minimum(y1, y2), torch.maximum(x1, x2), torch.maximum(y1, y2)


def suppression_matrix(boxes: torch.Tensor, center_point_box: int, iou_threshold: float) -> torch.Tensor:
    """(..., K, K) bool: box i suppresses box j (IoU > threshold), ONNX Runtime's arithmetic."""
    x0, y0, x1, y1 = _corners(boxes.to(torch.float32), center_point_box)
    ix0 = torch.maximum(x0[..., :, None], x0[..., None, :])
    ix1 = torch.minimum(x1[..., :, None], x1[..., None, :])
    iy0 = torch.maximum(y0[..., :, None], y0[..., None, :])
    iy1 = torch.minimum(y1[..., :, None], y1[..., None, :])
    inter = (ix1 - ix0) * (iy1 - iy0)
    area = (x1 - x0) * (y1 - y0)
    a1, a2 = area[..., :, None], area[..., None, :]
    union = a1 + a2 - inter
    valid = (ix1 > ix0) & (iy1 > iy0) & (inter > 0) & (a1 > 0) & (a2 > 0) & (union > 0)
    iou = inter / torch.where(valid, union, torch.ones_like(union))
    return valid & (iou > iou_threshold)


def non_max_suppression(
    boxes: torch.Tensor, scores: torch.Tensor, max_out: Any, iou_threshold: Any, score_threshold: Any,
    center_point_box: int,
) -> torch.Tensor:
    # boxes (B, P, 4), scores (B, C, P) -> selected (S, 3) int64
    device = boxes.device
    b, c, p = scores.shape
    limit = 0 if max_out is None else max(int(torch.as_tensor(max_out).reshape(-1)[0]), 0)
    if limit == 0 or p == 0 or b * c == 0:
        return torch.zeros((0, 3), dtype=torch.int64, device=device)
    thr = 0.0 if iou_threshold is None else float(torch.as_tensor(iou_threshold).reshape(-1)[0])
    flat = scores.reshape(b * c, p)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices  # ties: lower index first
    sorted_scores = torch.gather(flat, 1, order)
    alive = torch.ones_like(sorted_scores, dtype=torch.bool)
    if score_threshold is not None:
        alive = sorted_scores > float(torch.as_tensor(score_threshold).reshape(-1)[0])
    # candidates come first in visiting order: only the longest run of them needs comparing
    k = int(alive.sum(dim=1).max())
    order, alive = order[:, :k], alive[:, :k].clone()
    batch_of = torch.arange(b, device=device).repeat_interleave(c)
    chosen = torch.zeros_like(alive)
    rows_per_chunk = max(1, (1 << 24) // max(1, k * k))  # bounds the (rows, K, K) suppression matrix
    for r0 in range(0, b * c, rows_per_chunk):
        r1 = min(b * c, r0 + rows_per_chunk)
        cand = boxes[batch_of[r0:r1, None], order[r0:r1]]  # (rows, K, 4) in visiting order
        sup = suppression_matrix(cand, center_point_box, thr)  # (rows, K, K)
        live, pick = alive[r0:r1], chosen[r0:r1]
        count = torch.zeros(r1 - r0, dtype=torch.int64, device=device)
        for i in range(k):
            take = live[:, i] & (count < limit)
            if not bool(take.any()):
                if not bool(live[:, i:].any()):
                    break
                continue
            pick[:, i] = take
            count += take.to(torch.int64)
            live &= ~(take[:, None] & sup[:, i, :])
    rows, pos = chosen.nonzero(as_tuple=True)  # row-major: (batch, class) then visiting order
    return torch.stack([rows // c, rows % c, order[rows, pos]], dim=1).to(torch.int64)


@register("NonMaxSuppression", static_inputs=(2, 3, 4))
def _nms(ctx, node, boxes, scores, max_out=None, iou=None, score=None):
    return ctx.call(non_max_suppression, boxes, scores, max_out, iou, score, int(attr(node, "center_point_box", 0)))


# -- GatherND / ScatterND / ScatterElements / NonZero -----------------------------------------
def gather_nd(data: torch.Tensor, indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    idx = indices.to(torch.int64)
    bshape = data.shape[:batch_dims]
    nb = math.prod(bshape)
    m = idx.shape[-1]
    d = data.reshape(nb, *data.shape[batch_dims:])
    i = idx.reshape(nb, -1, m)
    dims = torch.tensor(d.shape[1 : 1 + m], device=idx.device)
    i = torch.where(i < 0, i + dims, i)
    b = torch.arange(nb, device=idx.device)[:, None].expand(nb, i.shape[1])
    out = d[(b, *i.unbind(-1))]  # (nb, L, *rest)
    return out.reshape(*idx.shape[:-1], *d.shape[1 + m :])


@register("GatherND")
def _gather_nd(ctx, node, data, indices):
    return ctx.call(gather_nd, data, indices, int(attr(node, "batch_dims", 0)))


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, reduction: str) -> torch.Tensor:
    idx = indices.to(torch.int64)
    m = idx.shape[-1]
    out = data.clone()
    flat_idx = idx.reshape(-1, m)
    dims = torch.tensor(data.shape[:m], device=idx.device)
    flat_idx = torch.where(flat_idx < 0, flat_idx + dims, flat_idx)
    upd = updates.reshape(flat_idx.shape[0], *data.shape[m:])
    if reduction == "none":
        out[tuple(flat_idx.unbind(-1))] = upd.to(out.dtype)  # duplicates: the last update wins
        return out
    # linear index into the leading m dims, then a reducing index_reduce / index_add
    strides = torch.tensor([math.prod(data.shape[k + 1 : m]) for k in range(m)], device=idx.device)
    lin = (flat_idx * strides).sum(-1)
    view = out.reshape(math.prod(data.shape[:m]), *data.shape[m:])
    if reduction == "add":
        view.index_add_(0, lin, upd.to(out.dtype))
    else:
        view.index_reduce_(0, lin, upd.to(out.dtype), _REDUCE[reduction], include_self=True)
    return view.reshape(data.shape)


@register("ScatterND")
def _scatter_nd(ctx, node, data, indices, updates):
    return ctx.call(scatter_nd, data, indices, updates, attr(node, "reduction", "none"))


def scatter_elements(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, axis: int,
                     reduction: str) -> torch.Tensor:
    a = axis % data.dim()
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + data.shape[a], idx)
    upd = updates.to(data.dtype)
    if reduction == "none":
        return data.scatter(a, idx, upd)
    return data.scatter_reduce(a, idx, upd, _REDUCE[reduction], include_self=True)


@register("ScatterElements")
def _scatter_elements(ctx, node, data, indices, updates):
    return ctx.call(scatter_elements, data, indices, updates, int(attr(node, "axis", 0)),
                    attr(node, "reduction", "none"))


def nonzero(x: torch.Tensor) -> torch.Tensor:
    # (rank, count), row-major order
    return torch.nonzero(x).t().contiguous().to(torch.int64)


@register("NonZero")
def _nonzero(ctx, node, x):
    return ctx.call(nonzero, x)


def one_hot(indices: torch.Tensor, depth: Any, values: torch.Tensor, axis: int) -> torch.Tensor:
    d = int(torch.as_tensor(depth).reshape(-1)[0])
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + d, idx)
    inside = (idx >= 0) & (idx < d)
    hot = torch.nn.functional.one_hot(torch.where(inside, idx, torch.zeros_like(idx)), d) & inside[..., None]
    out = torch.where(hot.bool(), values[1], values[0])  # (..., depth)
    a = axis % (indices.dim() + 1)
    return out.movedim(-1, a)


@register("OneHot")
def _one_hot(ctx, node, indices, depth, values):
    return ctx.call(one_hot, indices, depth, values, int(attr(node, "axis", -1)))


# -- MaxRoiPool / RoiAlign ---------------------------------------------------------------------
def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def max_roi_pool(x: torch.Tensor, rois: torch.Tensor, pooled: list[int], spatial_scale: float) -> torch.Tensor:
    # x (N, C, H, W), rois (R, 5) [batch, x1, y1, x2, y2] -> (R, C, ph, pw); Caffe's ROIPooling
    ph_n, pw_n = pooled
    h, w = x.shape[2], x.shape[3]
    scale = torch.tensor(spatial_scale, dtype=torch.float32)
    outs = []
    for r in range(rois.shape[0]):
        roi = rois[r].to(torch.float32)
        bi = int(roi[0])
        x1, y1, x2, y2 = (int(_round_half_away(roi[k] * scale)) for k in range(1, 5))
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = float(torch.tensor(rh, dtype=torch.float32) / ph_n), float(torch.tensor(rw, dtype=torch.float32) / pw_n)
        out = torch.zeros(x.shape[1], ph_n, pw_n, dtype=x.dtype, device=x.device)
        for i in range(ph_n):
            hs = min(max(int(math.floor(float(torch.tensor(i, dtype=torch.float32) * bh))) + y1, 0), h)
            he = min(max(int(math.ceil(float(torch.tensor(i + 1, dtype=torch.float32) * bh))) + y1, 0), h)
            for j in range(pw_n):
                ws = min(max(int(math.floor(float(torch.tensor(j, dtype=torch.float32) * bw))) + x1, 0), w)
                we = min(max(int(math.ceil(float(torch.tensor(j + 1, dtype=torch.float32) * bw))) + x1, 0), w)
                if he > hs and we > ws:
                    out[:, i, j] = x[bi, :, hs:he, ws:we].amax(dim=(1, 2))
        outs.append(out)
    if not outs:
        return x.new_zeros((0, x.shape[1], ph_n, pw_n))
    return torch.stack(outs)


@register("MaxRoiPool")
def _max_roi_pool(ctx, node, x, rois):
    return ctx.call(max_roi_pool, x, rois, list(attr(node, "pooled_shape")), float(attr(node, "spatial_scale", 1.0)))


def _bilinear_terms(pos: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX Runtime's bilinear sampling along one axis: (low, high, w_low, w_high, outside)."""
    outside = (pos < -1.0) | (pos > size)
    p = torch.clamp(pos, min=0.0)
    low = torch.floor(p).to(torch.int64)
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    p = torch.where(at_end, low.to(p.dtype), p)
    frac = p - low.to(p.dtype)
    return low, high, 1 - frac, frac, outside


def roi_align(x: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, mode: str, out_h: int, out_w: int,
              sampling_ratio: int, spatial_scale: float, half_pixel: bool) -> torch.Tensor:
    # x (N, C, H, W), rois (R, 4) [x1, y1, x2, y2], batch_indices (R,) -> (R, C, out_h, out_w)
    h, w = x.shape[2], x.shape[3]
    offset = 0.5 if half_pixel else 0.0
    # ONNX Runtime samples in the input's float type: float32 for float/half, float64 for double
    ft = torch.float64 if x.dtype == torch.float64 else torch.float32
    outs = []
    for r in range(rois.shape[0]):
        roi = rois[r].to(ft)
        bi = int(batch_indices[r])
        sw, sh = roi[0] * spatial_scale - offset, roi[1] * spatial_scale - offset
        ew, eh = roi[2] * spatial_scale - offset, roi[3] * spatial_scale - offset
        rw, rh = ew - sw, eh - sh
        if not half_pixel:
            rw, rh = torch.clamp(rw, min=1.0), torch.clamp(rh, min=1.0)
        bin_h, bin_w = rh / out_h, rw / out_w
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(float(rh / out_h)))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(float(rw / out_w)))
        count = max(gh * gw, 1)
        if gh <= 0 or gw <= 0:  # an empty ROI samples nothing: zeros, as ONNX Runtime
            outs.append(x.new_zeros((x.shape[1], out_h, out_w)))
            continue
        # sample positions (out, grid) along each axis
        ys = sh + torch.arange(out_h, dtype=ft)[:, None] * bin_h \
            + (torch.arange(gh, dtype=ft)[None, :] + 0.5) * bin_h / gh
        xs = sw + torch.arange(out_w, dtype=ft)[:, None] * bin_w \
            + (torch.arange(gw, dtype=ft)[None, :] + 0.5) * bin_w / gw
        yl, yh, hy, ly, yout = _bilinear_terms(ys.reshape(-1), h)
        xl, xh, hx, lx, xout = _bilinear_terms(xs.reshape(-1), w)
        img = x[bi].to(ft)  # (C, H, W)
        # corner values (C, Y, X) and weights (Y, X)
        v1, v2 = img[:, yl][:, :, xl], img[:, yl][:, :, xh]
        v3, v4 = img[:, yh][:, :, xl], img[:, yh][:, :, xh]
        w1, w2 = hy[:, None] * hx[None, :], hy[:, None] * lx[None, :]
        w3, w4 = ly[:, None] * hx[None, :], ly[:, None] * lx[None, :]
        outside = yout[:, None] | xout[None, :]
        if mode == "max":
            val = torch.maximum(torch.maximum(torch.maximum(w1 * v1, w2 * v2), w3 * v3), w4 * v4)
            val = torch.where(outside, torch.zeros_like(val), val)
            val = val.reshape(-1, out_h, gh, out_w, gw).amax(dim=(2, 4))
        else:
            val = w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
            val = torch.where(outside, torch.zeros_like(val), val)
            val = val.reshape(-1, out_h, gh, out_w, gw).sum(dim=(2, 4)) / count
        outs.append(val.to(x.dtype))
    if not outs:
        return x.new_zeros((0, x.shape[1], out_h, out_w))
    return torch.stack(outs)


@register("RoiAlign")
def _roi_align(ctx, node, x, rois, batch_indices):
    mode = attr(node, "coordinate_transformation_mode", "half_pixel")
    return ctx.call(
        roi_align, x, rois, batch_indices, attr(node, "mode", "avg"), int(attr(node, "output_height", 1)),
        int(attr(node, "output_width", 1)), int(attr(node, "sampling_ratio", 0)),
        float(attr(node, "spatial_scale", 1.0)), mode == "half_pixel",
    )
