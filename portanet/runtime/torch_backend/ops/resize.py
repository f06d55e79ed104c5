"""Resize (every coordinate transformation, nearest/linear/cubic) and the older Upsample.

Resizing is separable: one axis at a time, each output position maps to a source
coordinate (``coordinate_transformation_mode``), then gathers 1 (nearest), 2 (linear) or
4 (cubic) neighbours with edge-clamped indices and mixes them with differentiable weights.
The common nearest/asymmetric/floor and linear/half_pixel cases on 4-D tensors use
``F.interpolate`` directly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from portanet.runtime.torch_backend.ops._util import attr
from portanet.runtime.torch_backend.registry import register


def _floats(v: Any) -> list[float] | None:
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return [float(i) for i in v.reshape(-1).tolist()]
    return [float(i) for i in v]


def _source_coord(
    o: torch.Tensor, n_in: int, n_out: int, scale: float, mode: str, roi: tuple[float, float]
) -> torch.Tensor:
    """Output positions ``o`` (float64) -> coordinates in the input axis.

    As in ONNX, ``length_resized`` is the unrounded ``scale * n_in`` (``n_out`` is its floor).
    """
    length = scale * n_in
    if mode == "half_pixel":
        return (o + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (o + 0.5) / scale - 0.5 if length != 1 else torch.full_like(o, -0.5)
    if mode == "align_corners":
        return o * (n_in - 1) / (length - 1) if length != 1 else torch.zeros_like(o)
    if mode == "asymmetric":
        return o / scale
    if mode == "half_pixel_symmetric":
        adjustment = n_out / length
        offset = n_in / 2 * (1 - adjustment)
        return offset + (o + 0.5) / scale - 0.5
    if mode == "tf_crop_and_resize":
        start, end = roi
        if length != 1:
            return start * (n_in - 1) + o * (end - start) * (n_in - 1) / (length - 1)
        return torch.full_like(o, 0.5 * (start + end) * (n_in - 1))
    raise ValueError(f"unknown coordinate_transformation_mode '{mode}'")


def _nearest(xo: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "round_prefer_floor":
        return torch.ceil(xo - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(xo + 0.5)
    if mode == "floor":
        return torch.floor(xo)
    if mode == "ceil":
        return torch.ceil(xo)
    raise ValueError(f"unknown nearest_mode '{mode}'")


def _cubic_weights(r: torch.Tensor, a: float) -> torch.Tensor:
    """Keys cubic convolution weights of the 4 neighbours floor-1 .. floor+2; r in [0, 1)."""
    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 < |t| < 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    return torch.stack([far(r + 1), near(r), near(1 - r), far(2 - r)], dim=-1)


def _keys_cubic(t: torch.Tensor, a: float) -> torch.Tensor:
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _antialias_axis(x, axis, xo, n_in, scale, cfg, take):
    """Downsampling with ``antialias=1``: the linear/cubic filter stretched by 1/scale
    (support 2/scale resp. 4/scale input pixels), weights normalised to sum 1."""
    support = 1.0 if cfg["mode"] == "linear" else 2.0
    start = math.floor(-support / scale) + 1
    offsets = torch.arange(start, 2 - start, dtype=torch.float64)  # (K,)
    fl = torch.floor(xo)
    integer = xo == fl
    # ONNX keeps the fractional part in (0, 1]: an integer coordinate counts from the left pixel
    r = torch.where(integer, torch.ones_like(xo), xo - fl)
    base = torch.where(integer, fl - 1, fl)
    t = (offsets[None, :] - r[:, None]) * scale  # (n_out, K)
    w = (1 - t.abs()).clamp(0, 1) if cfg["mode"] == "linear" else _keys_cubic(t, cfg["cubic_coeff_a"])
    idx = base[:, None] + offsets[None, :]
    if cfg["exclude_outside"]:
        w = torch.where((idx < 0) | (idx > n_in - 1), torch.zeros_like(w), w)
    w = w / w.sum(dim=-1, keepdim=True)
    view = [1] * x.dim()
    view[axis] = -1
    w = w.to(x.dtype).to(x.device)
    return sum(take(idx[:, k]) * w[:, k].reshape(view) for k in range(idx.shape[1]))


def _resize_axis(
    x: torch.Tensor, axis: int, n_out: int, scale: float, cfg: dict[str, Any], roi: tuple[float, float]
) -> torch.Tensor:
    n_in = x.shape[axis]
    o = torch.arange(n_out, dtype=torch.float64)
    xo = _source_coord(o, n_in, n_out, scale, cfg["ctm"], roi)
    view = [1] * x.dim()
    view[axis] = n_out

    def take(idx: torch.Tensor) -> torch.Tensor:
        return x.index_select(axis, idx.clamp(0, n_in - 1).to(torch.int64).to(x.device))

    mode = cfg["mode"]
    if cfg.get("antialias", 0) and mode != "nearest" and scale < 1:
        y = _antialias_axis(x, axis, xo, n_in, scale, cfg, take)
    elif mode == "nearest":
        y = take(_nearest(xo, cfg["nearest_mode"]))
    elif mode == "linear":
        i0 = torch.floor(xo)
        w = (xo - i0).to(x.dtype).to(x.device).reshape(view)
        y = take(i0) * (1 - w) + take(i0 + 1) * w
    elif mode == "cubic":
        i0 = torch.floor(xo)
        wts = _cubic_weights(xo - i0, cfg["cubic_coeff_a"])  # (n_out, 4)
        idx = torch.stack([i0 - 1, i0, i0 + 1, i0 + 2], dim=-1)
        if cfg["exclude_outside"]:
            wts = torch.where((idx < 0) | (idx > n_in - 1), torch.zeros_like(wts), wts)
            wts = wts / wts.sum(dim=-1, keepdim=True)
        wts = wts.to(x.dtype).to(x.device)
        y = sum(take(idx[:, k]) * wts[:, k].reshape(view) for k in range(4))
    else:
        raise ValueError(f"unknown Resize mode '{mode}'")
    if cfg["ctm"] == "tf_crop_and_resize":
        outside = ((xo < 0) | (xo > n_in - 1)).to(x.device).reshape(view)
        y = torch.where(outside, torch.full_like(y, cfg["extrapolation_value"]), y)
    return y


def resize(x: torch.Tensor, roi: Any, scales: Any, sizes: Any, cfg: dict[str, Any]) -> torch.Tensor:
    r = x.dim()
    axes = [a % r for a in cfg["axes"]] if cfg.get("axes") else list(range(r))
    in_sizes = [x.shape[a] for a in axes]
    size_list = _floats(sizes)
    if size_list:
        out = [int(s) for s in size_list]
        ratios = [o / i for o, i in zip(out, in_sizes)]
        policy = cfg.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            s = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [s] * len(axes)
            out = [int(math.floor(s * i + 0.5)) for i in in_sizes]  # round half up, as ONNX
        scale_list = ratios
    else:
        scale_list = _floats(scales) or [1.0] * len(axes)
        out = [int(math.floor(i * s)) for i, s in zip(in_sizes, scale_list)]
    roi_list = _floats(roi) or []
    antialias = cfg.get("antialias", 0) and cfg["mode"] != "nearest" and any(s < 1 for s in scale_list)
    fast = None if antialias else _fast_path(x, axes, out, scale_list, cfg, bool(size_list))
    if fast is not None:
        return fast
    k = len(axes)
    for j, a in enumerate(axes):
        roi_a = (roi_list[j], roi_list[j + k]) if len(roi_list) == 2 * k else (0.0, 1.0)
        if out[j] == in_sizes[j] and scale_list[j] == 1.0 and cfg["ctm"] != "tf_crop_and_resize":
            continue
        x = _resize_axis(x, a, out[j], scale_list[j], cfg, roi_a)
    return x


def _fast_path(x, axes, out, scales, cfg, by_size):
    """F.interpolate where its arithmetic is ONNX's (4-D NCHW, only H and W resized)."""
    if x.dim() != 4 or axes != [0, 1, 2, 3] or out[0] != x.shape[0] or out[1] != x.shape[1]:
        return None
    if scales[0] != 1.0 or scales[1] != 1.0:
        return None
    kw = {"size": out[2:]} if by_size else {"scale_factor": scales[2:]}
    if cfg["mode"] == "nearest" and cfg["ctm"] == "asymmetric" and cfg["nearest_mode"] == "floor":
        return F.interpolate(x, mode="nearest", **kw)
    if cfg["mode"] == "linear" and cfg["ctm"] == "half_pixel":
        return F.interpolate(x, mode="bilinear", align_corners=False, **kw)
    return None


@register("Resize", static_inputs=(1, 2, 3))
def _resize(ctx, node, x, roi=None, scales=None, sizes=None):
    if ctx.opset < 11:
        # Resize-10: (X, scales), asymmetric coordinates, floor for nearest
        sizes, scales, roi = None, roi, None
        default_ctm, default_nearest = "asymmetric", "floor"
    else:
        default_ctm, default_nearest = "half_pixel", "round_prefer_floor"
    cfg = {
        "mode": attr(node, "mode", "nearest"),
        "ctm": attr(node, "coordinate_transformation_mode", default_ctm),
        "nearest_mode": attr(node, "nearest_mode", default_nearest),
        "cubic_coeff_a": float(attr(node, "cubic_coeff_a", -0.75)),
        "exclude_outside": int(attr(node, "exclude_outside", 0)),
        "extrapolation_value": float(attr(node, "extrapolation_value", 0.0)),
        "antialias": int(attr(node, "antialias", 0)),
        "axes": attr(node, "axes"),
        "keep_aspect_ratio_policy": attr(node, "keep_aspect_ratio_policy", "stretch"),
    }
    if ctx.opset < 11:
        cfg["ctm"], cfg["nearest_mode"] = "asymmetric", "floor"
    static = [_floats(ctx.const(v)) if ctx.const(v) is not None else v for v in (roi, scales, sizes)]
    return ctx.call(resize, x, *static, cfg)


@register("Upsample", static_inputs=(1,))
def upsample(ctx, node, x, scales=None):
    if scales is None:
        scales = attr(node, "scales")
    elif ctx.const(scales) is not None:
        scales = _floats(ctx.const(scales))
    cfg = {
        "mode": "linear" if attr(node, "mode", "nearest") in ("linear", "bilinear") else "nearest",
        "ctm": "asymmetric",
        "nearest_mode": "floor",
        "cubic_coeff_a": -0.75,
        "exclude_outside": 0,
        "extrapolation_value": 0.0,
    }
    return ctx.call(resize, x, None, scales, None, cfg)
