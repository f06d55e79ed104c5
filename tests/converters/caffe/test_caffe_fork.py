"""Layers of the Caffe forks, each on ONNX Runtime and the torch backend (which must agree).

References: real BVLC Caffe where it has the layer (Pooling's mask top, Slice); OpenCV's DNN
module for ROIPooling and ShuffleChannel; otherwise the numpy references below, written from
each fork's C++ source: ``caffe_cpu_interp2`` (DeepLab's Interp), SegNet's ``UpsampleLayer``,
SegNet/yjxiong's ``BNLayer`` and darknet's ``reorg_cpu`` (YOLOv2's Reorg).
"""

from __future__ import annotations

import numpy as np
import pytest

from portanet.converters.registry import convert_paths
from portanet.errors import ConversionError
from portanet.runtime.session import Session

RTOL, ATOL = 1e-4, 1e-5


def _run(paths, feeds):
    model = convert_paths(paths)
    ort = Session(model).run(feeds)
    tch = Session(model, backend="torch").run(feeds)
    for k in ort:
        np.testing.assert_allclose(tch[k], ort[k], rtol=RTOL, atol=ATOL, err_msg=f"torch vs ort: {k}")
    return ort


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------- Interp
def ref_interp(x, ho, wo, pad_beg=0, pad_end=0):
    """caffe_cpu_interp2 over the input cropped by -pad_beg / -pad_end (float32 arithmetic)."""
    n, c, h, w = x.shape
    x = x[:, :, -pad_beg: h + pad_end, -pad_beg: w + pad_end]
    h1, w1 = x.shape[2:]
    rh = np.float32(h1 - 1) / np.float32(ho - 1) if ho > 1 else np.float32(0)
    rw = np.float32(w1 - 1) / np.float32(wo - 1) if wo > 1 else np.float32(0)
    out = np.zeros((n, c, ho, wo), np.float32)
    for i in range(ho):
        hr = np.float32(rh * i)
        hi = int(hr)
        hp = 1 if hi < h1 - 1 else 0
        l1 = np.float32(hr - hi)
        l0 = np.float32(1) - l1
        for j in range(wo):
            wr = np.float32(rw * j)
            wi = int(wr)
            wp = 1 if wi < w1 - 1 else 0
            m1 = np.float32(wr - wi)
            m0 = np.float32(1) - m1
            out[:, :, i, j] = (l0 * (m0 * x[:, :, hi, wi] + m1 * x[:, :, hi, wi + wp])
                               + l1 * (m0 * x[:, :, hi + hp, wi] + m1 * x[:, :, hi + hp, wi + wp]))
    return out


INTERP = {
    "zoom": ("zoom_factor: 3", (19, 22)),
    "shrink": ("shrink_factor: 2", (4, 4)),
    "height_width": ("height: 13 width: 5", (13, 5)),
    "shrink_then_zoom": ("shrink_factor: 2 zoom_factor: 4", (13, 13)),
    "crop_and_zoom": ("zoom_factor: 2 pad_beg: -1 pad_end: -2", (7, 9)),
}


@pytest.mark.parametrize("case", list(INTERP))
def test_interp(caffe, case):
    text, size = INTERP[case]
    proto, weights = caffe.write(caffe.net_text(
        f'layer {{ name: "up" type: "Interp" bottom: "data" top: "up" interp_param {{ {text} }} }}\n', (2, 3, 7, 8)))
    x = _x((2, 3, 7, 8))
    got = _run([proto, weights], {"data": x})["up"]
    pads = (-1, -2) if case == "crop_and_zoom" else (0, 0)
    assert got.shape[2:] == size
    caffe.close(got, ref_interp(x, *size, *pads))


# ------------------------------------------------------------------------ Pooling mask + Upsample
def ref_unpool(x, mask, ho, wo):
    """SegNet's UpsampleLayer::Forward_cpu: top[mask[i]] = bottom[i] per (n, c) plane."""
    n, c = x.shape[:2]
    out = np.zeros((n, c, ho * wo), np.float32)
    for a in range(n):
        for b in range(c):
            for v, i in zip(x[a, b].reshape(-1), mask[a, b].reshape(-1).astype(int)):
                out[a, b, i] = v
    return out.reshape(n, c, ho, wo)


UNPOOL = {
    "segnet_2x2": ((1, 3, 8, 10), "kernel_size: 2 stride: 2", "scale: 2", (8, 10)),
    "odd_ceil_upsample_hw": ((2, 2, 7, 9), "kernel_size: 2 stride: 2", "scale: 2 upsample_h: 7 upsample_w: 9", (7, 9)),
    "pad_out": ((1, 2, 7, 7), "kernel_size: 2 stride: 2", "scale: 2 pad_out_h: true pad_out_w: true", (7, 7)),
    "padded_3x3": ((1, 2, 9, 9), "kernel_size: 3 stride: 2 pad: 1", "scale: 2 upsample_h: 9 upsample_w: 9", (9, 9)),
}


@pytest.mark.parametrize("case", list(UNPOOL))
def test_pooling_mask_and_upsample(caffe, case, request):
    shape, pool, up, size = UNPOOL[case]
    text = caffe.net_text(
        f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask" '
        f"pooling_param {{ pool: MAX {pool} }} }}\n"
        f'layer {{ name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up" upsample_param {{ {up} }} }}\n',
        shape,
    )
    proto, weights = caffe.write(text)
    x = _x(shape, seed=3)
    model = convert_paths([proto, weights])
    from tests.converters.caffe.test_caffe_ssd import _with_outputs

    model = _with_outputs(model, ["pool", "mask"])
    got = Session(model).run({"data": x})
    tch = Session(model, backend="torch").run({"data": x})
    for k in got:
        np.testing.assert_array_equal(tch[k], got[k], err_msg=k)
    # the pooled values and mask: real Caffe where built, else OpenCV (both have the mask top)
    from portanet.parity.runners import caffe as runner

    pool_only = caffe.folder / "pool.prototxt"
    pool_only.write_text(text.split('layer { name: "up"')[0])
    if runner.caffe_python() is not None and runner.caffe_layer_types():
        ref = runner.run_caffe([pool_only], {"data": x}, options={"output_names": ["pool", "mask"]})
        np.testing.assert_array_equal(got["mask"], ref["mask"])
    else:  # OpenCV does not expose the mask by name: the unpooling below still checks it
        ref = caffe.opencv(pool_only, None, {"data": x}, ["pool"])
    np.testing.assert_array_equal(got["pool"], ref["pool"])
    assert got["up"].shape[2:] == size
    np.testing.assert_array_equal(got["up"], ref_unpool(got["pool"], got["mask"], *size))


def test_nearest_upsample(caffe):
    """The YOLOv3 forks' Upsample (no mask): nearest neighbour by ``scale``."""
    proto, weights = caffe.write(caffe.net_text(
        'layer { name: "up" type: "Upsample" bottom: "data" top: "up" upsample_param { scale: 2 } }\n', (1, 4, 5, 6)))
    x = _x((1, 4, 5, 6))
    got = _run([proto, weights], {"data": x})["up"]
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(2, axis=3))


# ------------------------------------------------------------------------------------------ BN
@pytest.mark.parametrize("blobs", [2, 4])
def test_fork_bn(caffe, blobs):
    rng = np.random.default_rng(4)
    c = 5
    text = caffe.net_text(
        'layer { name: "bn" type: "BN" bottom: "data" top: "bn" '
        f'bn_param {{ bn_mode: INFERENCE {"eps: 0.001" if blobs == 4 else ""} }} }}\n', (2, c, 4, 3))
    proto = caffe.folder / "bn.prototxt"
    proto.write_text(text)
    arrays = [rng.uniform(0.5, 1.5, (1, c, 1, 1)), rng.standard_normal((1, c, 1, 1))]
    if blobs == 4:
        arrays += [rng.standard_normal((1, c, 1, 1)), rng.uniform(0.5, 2, (1, c, 1, 1))]
    weights = caffe.write_weights("bn.caffemodel", {"bn": arrays})
    x = _x((2, c, 4, 3))
    got = _run([proto, weights], {"data": x})["bn"]
    a = [np.asarray(v, np.float32) for v in arrays]
    want = a[0] * x + a[1] if blobs == 2 else a[0] * (x - a[2]) / np.sqrt(a[3] + np.float32(0.001)) + a[1]
    caffe.close(got, want)


def test_fork_bn_learn_mode_is_refused(caffe):
    proto = caffe.folder / "bn.prototxt"
    proto.write_text(caffe.net_text('layer { name: "bn" type: "BN" bottom: "data" top: "bn" }\n', (1, 2, 3, 3)))
    weights = caffe.write_weights("bn.caffemodel", {"bn": [np.ones((1, 2, 1, 1)), np.zeros((1, 2, 1, 1))]})
    with pytest.raises(ConversionError, match="bn_mode LEARN"):
        convert_paths([proto, weights])


# ---------------------------------------------------------------------- ShuffleChannel / Reorg
def test_shuffle_channel_matches_opencv(caffe):
    proto, weights = caffe.write(caffe.net_text(
        'layer { name: "sh" type: "ShuffleChannel" bottom: "data" top: "sh" shuffle_channel_param { group: 3 } }\n',
        (2, 12, 3, 4)))
    x = _x((2, 12, 3, 4))
    got = _run([proto, weights], {"data": x})["sh"]
    np.testing.assert_array_equal(got, x.reshape(2, 3, 4, 3, 4).transpose(0, 2, 1, 3, 4).reshape(2, 12, 3, 4))
    np.testing.assert_array_equal(got, caffe.opencv(proto, weights, {"data": x}, ["sh"])["sh"])


def ref_reorg(x, stride, forward):
    """darknet's reorg_cpu(x, w, h, c, batch, stride, forward, out) with the bottom's sizes."""
    b_, c, h, w = x.shape
    flat, out = x.reshape(-1), np.zeros(x.size, np.float32)
    out_c = c // (stride * stride)
    for b in range(b_):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = flat[in_index]
                    else:
                        out[in_index] = flat[out_index]
    if forward:
        return out.reshape(b_, out_c, h * stride, w * stride)
    return out.reshape(b_, c * stride * stride, h // stride, w // stride)


@pytest.mark.parametrize("reverse", [False, True])
def test_reorg(caffe, reverse):
    shape = (2, 8, 4, 6)
    proto, weights = caffe.write(caffe.net_text(
        f'layer {{ name: "re" type: "Reorg" bottom: "data" top: "re" reorg_param {{ stride: 2 '
        f'reverse: {str(reverse).lower()} }} }}\n', shape))
    x = _x(shape)
    got = _run([proto, weights], {"data": x})["re"]
    np.testing.assert_array_equal(got, ref_reorg(x, 2, forward=reverse))


# ------------------------------------------------------------------------------------ ROIPooling
def test_roi_pooling_matches_opencv(caffe):
    rois = np.asarray([[0, 1, 1, 20, 14], [1, 6, 2, 30, 31], [0, 9, 9, 9, 9], [1, 0, 0, 40, 40], [0, 5, 3, 11, 12]],
                      np.float32)
    text = caffe.net_text(
        'layer { name: "pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool" '
        "roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.25 } }\n",
        inputs={"data": (2, 4, 10, 9), "rois": (5, 5)},
    )
    proto, weights = caffe.write(text)
    feeds = {"data": _x((2, 4, 10, 9)), "rois": rois}
    got = _run([proto, weights], feeds)["pool"]
    np.testing.assert_array_equal(got, caffe.opencv(proto, weights, feeds, ["pool"])["pool"])


# ----------------------------------------------------------------------------------------- Slice
SLICES = {
    "uneven": ("axis: 1 slice_point: 1 slice_point: 4", 3),
    "single_top": ("axis: 2", 1),
    "negative_axis": ("axis: -1 slice_point: 1", 2),
    "legacy_slice_dim": ("slice_dim: 1 slice_point: 1 slice_point: 3", 3),
}


@pytest.mark.caffe
@pytest.mark.parametrize("case", list(SLICES))
def test_slice_edge_cases_match_real_caffe(caffe, real_caffe, case):
    text, tops = SLICES[case]
    top_names = [f"s{i}" for i in range(tops)]
    tops_text = " ".join(f'top: "{t}"' for t in top_names)
    body = (f'layer {{ name: "sl" type: "Slice" bottom: "data" {tops_text} slice_param {{ {text} }} }}\n'
            + "".join(f'layer {{ name: "e{i}" type: "Exp" bottom: "{t}" top: "e{i}" }}\n'
                      for i, t in enumerate(top_names)))
    proto, weights = caffe.write(caffe.net_text(body, (2, 5, 3, 4)))
    feeds = {"data": _x((2, 5, 3, 4))}
    got = _run([proto, weights], feeds)
    from portanet.parity.runners import caffe as runner

    ref = runner.run_caffe([proto, weights], feeds, options={"output_names": [f"e{i}" for i in range(tops)]})
    for k in ref:
        assert got[k].shape == ref[k].shape, k
        caffe.close(got[k], ref[k])


@pytest.mark.parametrize("points", ["slice_point: 6", "slice_point: 5", "slice_point: 3 slice_point: 3"])
def test_slice_points_leaving_an_empty_top_are_refused(caffe, points):
    """Caffe fails on an empty or negative slice (at set-up, or when it first touches the top)."""
    tops = 'top: "a" top: "b"' + (' top: "c"' if points.count("slice_point") == 2 else "")
    proto, weights = caffe.write(caffe.net_text(
        f'layer {{ name: "sl" type: "Slice" bottom: "data" {tops} slice_param {{ axis: 1 {points} }} }}\n',
        (1, 5, 2, 2)))
    with pytest.raises(ConversionError, match="slice points"):
        convert_paths([proto, weights])
