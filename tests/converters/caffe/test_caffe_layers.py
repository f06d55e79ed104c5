"""Per-layer parity: each Caffe layer, over its attributes, converted and run by ONNX Runtime,
against OpenCV's DNN module running the same files. Where OpenCV deviates from Caffe it gets
an equivalent net (said so at each case); where it lacks a layer, an independent numpy
implementation of Caffe's formula is the reference."""

from __future__ import annotations

import numpy as np
import pytest

# (id, layers after the Input "data", input shape); the tested output is top "y"
CONV = [
    ("conv_k3_p1", 'convolution_param { num_output: 5 kernel_size: 3 pad: 1 }', (2, 3, 8, 8)),
    ("conv_hw", "convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 stride_h: 2 stride_w: 1 }",
     (2, 3, 9, 8)),
    ("conv_group", "convolution_param { num_output: 6 kernel_size: 3 group: 3 }", (2, 6, 7, 7)),
    ("conv_depthwise", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 group: 4 }", (2, 4, 6, 6)),
    ("conv_dilation", "convolution_param { num_output: 4 kernel_size: 3 dilation: 2 pad: 2 }", (2, 3, 9, 9)),
    ("conv_nobias_stride", "convolution_param { num_output: 4 kernel_size: 2 stride: 2 bias_term: false }",
     (2, 3, 8, 8)),
    ("conv_1x1", "convolution_param { num_output: 7 kernel_size: 1 }", (2, 5, 4, 4)),
    ("conv_repeated_per_axis", "convolution_param { num_output: 3 kernel_size: 3 kernel_size: 2 pad: 1 pad: 0 "
     "stride: 2 stride: 1 }", (2, 3, 7, 6)),
]
DECONV = [
    ("deconv_k4_s2_p1", "convolution_param { num_output: 3 kernel_size: 4 stride: 2 pad: 1 }", (2, 4, 5, 5)),
    ("deconv_group", "convolution_param { num_output: 4 kernel_size: 3 stride: 2 group: 2 }", (2, 4, 5, 5)),
    ("deconv_nobias", "convolution_param { num_output: 2 kernel_size: 2 stride: 2 bias_term: false }", (2, 3, 4, 4)),
]
POOL = [
    ("max_k3_s2_ceil", "pool: MAX kernel_size: 3 stride: 2", (2, 3, 8, 8)),
    ("max_k3_s2_p1", "pool: MAX kernel_size: 3 stride: 2 pad: 1", (2, 3, 8, 8)),
    ("max_k2_s2_p1_clip", "pool: MAX kernel_size: 2 stride: 2 pad: 1", (2, 3, 6, 6)),
    ("max_rect", "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1", (2, 2, 7, 6)),
    ("ave_k3_s2_ceil", "pool: AVE kernel_size: 3 stride: 2", (2, 3, 8, 8)),
    ("ave_k3_s2_p1_divisor", "pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 3, 8, 8)),
    ("ave_k3_s3_p1", "pool: AVE kernel_size: 3 stride: 3 pad: 1", (2, 3, 7, 7)),
    ("ave_k2_s2_p1_clip", "pool: AVE kernel_size: 2 stride: 2 pad: 1", (2, 3, 6, 6)),
    ("ave_k3_s1_p1", "pool: AVE kernel_size: 3 stride: 1 pad: 1", (2, 3, 5, 5)),
    ("global_max", "pool: MAX global_pooling: true", (2, 3, 5, 4)),
    ("global_ave", "pool: AVE global_pooling: true", (2, 3, 5, 4)),
]
SIMPLE = [
    ("relu", 'type: "ReLU"', ""),
    ("relu_slope", 'type: "ReLU"', "relu_param { negative_slope: 0.1 }"),
    ("prelu", 'type: "PReLU"', ""),
    ("sigmoid", 'type: "Sigmoid"', ""),
    ("tanh", 'type: "TanH"', ""),
    ("elu", 'type: "ELU"', "elu_param { alpha: 0.7 }"),
    ("absval", 'type: "AbsVal"', ""),
    ("bnll", 'type: "BNLL"', ""),
    ("power_sq", 'type: "Power"', "power_param { power: 2 scale: 0.5 shift: 0.25 }"),
    ("power_affine", 'type: "Power"', "power_param { scale: -1.5 shift: 0.25 }"),
    ("power_identity", 'type: "Power"', ""),
    ("exp", 'type: "Exp"', ""),
    ("exp_base2", 'type: "Exp"', "exp_param { base: 2 scale: 0.5 shift: 0.1 }"),
    ("swish", 'type: "Swish"', ""),
    ("dropout", 'type: "Dropout"', "dropout_param { dropout_ratio: 0.3 }"),
    ("lrn_across", 'type: "LRN"', "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }"),
    ("lrn_within", 'type: "LRN"', "lrn_param { local_size: 3 alpha: 0.7 beta: 0.6 norm_region: WITHIN_CHANNEL }"),
    ("mvn", 'type: "MVN"', ""),
    ("mvn_across_mean_only", 'type: "MVN"', "mvn_param { across_channels: true normalize_variance: false }"),
    ("normalize_spatial", 'type: "Normalize"', "norm_param { across_spatial: true channel_shared: true }"),
    ("normalize_channels", 'type: "Normalize"', "norm_param { across_spatial: false channel_shared: false }"),
    ("softmax", 'type: "Softmax"', ""),
    ("softmax_axis2", 'type: "Softmax"', "softmax_param { axis: 2 }"),
    ("softmax_axis_neg1", 'type: "Softmax"', "softmax_param { axis: -1 }"),
    ("flatten", 'type: "Flatten"', ""),
    ("flatten_axis2", 'type: "Flatten"', "flatten_param { axis: 2 }"),
    ("flatten_1_2", 'type: "Flatten"', "flatten_param { axis: 1 end_axis: 2 }"),
    ("reshape_copy_infer", 'type: "Reshape"', "reshape_param { shape { dim: 0 dim: -1 dim: 4 } }"),
    ("reshape_axis", 'type: "Reshape"', "reshape_param { shape { dim: 3 dim: -1 } axis: 3 num_axes: 1 }"),
    ("permute", 'type: "Permute"', "permute_param { order: 0 order: 2 order: 3 order: 1 }"),
    ("batchnorm", 'type: "BatchNorm"', ""),
    ("scale_bias", 'type: "Scale"', "scale_param { bias_term: true }"),
    ("scale_axis2", 'type: "Scale"', "scale_param { axis: 2 num_axes: 2 }"),
    ("scale_to_end", 'type: "Scale"', "scale_param { axis: 1 num_axes: -1 bias_term: true }"),
]
POSITIVE = {"bnll", "power_sq", "lrn_within", "lrn_across"}


def _feeds(shape: tuple[int, ...], seed: int = 1, positive: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.2, 2.0, shape) if positive else rng.standard_normal(shape)
    return {"data": x.astype(np.float32)}


def _check(caffe, layers: str, shape: tuple[int, ...], *, positive: bool = False, out: str = "y") -> dict:
    proto, model = caffe.write(caffe.net_text(layers, shape))
    feeds = _feeds(shape, positive=positive)
    _, got = caffe.convert_run([proto, model], feeds)
    ref = caffe.opencv(proto, model, feeds, [out])
    caffe.close(got[out], ref[out])
    return got


@pytest.mark.parametrize("case,params,shape", CONV, ids=[c[0] for c in CONV])
def test_convolution(caffe, case, params, shape):
    _check(caffe, f'layer {{ name: "y" type: "Convolution" bottom: "data" top: "y" {params} }}\n', shape)


@pytest.mark.parametrize("case,params,shape", DECONV, ids=[c[0] for c in DECONV])
def test_deconvolution(caffe, case, params, shape):
    _check(caffe, f'layer {{ name: "y" type: "Deconvolution" bottom: "data" top: "y" {params} }}\n', shape)


@pytest.mark.parametrize("case,params,shape", POOL, ids=[c[0] for c in POOL])
def test_pooling(caffe, case, params, shape):
    got = _check(caffe, f'layer {{ name: "y" type: "Pooling" bottom: "data" top: "y" pooling_param {{ {params} }} }}\n',
                 shape)
    assert got["y"].shape[:2] == shape[:2]


@pytest.mark.parametrize("case,typ,params", SIMPLE, ids=[c[0] for c in SIMPLE])
def test_single_bottom_layers(caffe, case, typ, params):
    _check(caffe, f'layer {{ name: "y" {typ} bottom: "data" top: "y" {params} }}\n', (2, 4, 5, 6),
           positive=case in POSITIVE)


@pytest.mark.parametrize("params,shape", [
    ("", (2, 3, 4, 4)),
    ("bias_term: false", (2, 3, 4, 4)),
    ("axis: 2", (2, 3, 4, 5)),
    ("", (2, 12)),
])
def test_inner_product(caffe, params, shape):
    _check(caffe, 'layer { name: "y" type: "InnerProduct" bottom: "data" top: "y" '
           f"inner_product_param {{ num_output: 7 {params} }} }}\n", shape)


def test_inner_product_transpose(caffe):
    """OpenCV ignores ``transpose``; it gets an equivalent net with pre-transposed weights."""
    shape, n = (2, 3, 2, 2), 5
    text = caffe.net_text('layer { name: "y" type: "InnerProduct" bottom: "data" top: "y" '
                          f"inner_product_param {{ num_output: {n} transpose: true }} }}\n", shape)
    w = np.random.default_rng(0).standard_normal((12, n)).astype(np.float32)  # (K, N) with transpose
    b = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    proto = caffe.folder / "t.prototxt"
    proto.write_text(text)
    model = caffe.write_weights("t.caffemodel", {"y": [w, b]})
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    eq_proto = caffe.folder / "eq.prototxt"
    eq_proto.write_text(text.replace("transpose: true", ""))
    eq_model = caffe.write_weights("eq.caffemodel", {"y": [w.T.copy(), b]})
    ref = caffe.opencv(eq_proto, eq_model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


def test_pooling_floor_round_mode(caffe):
    """BVLC's ``round_mode: FLOOR`` is unknown to OpenCV: its equivalent net says
    ``ceil_mode: false``. The converted output must be smaller than the CEIL one."""
    shape = (2, 3, 8, 8)
    layer = 'layer {{ name: "y" type: "Pooling" bottom: "data" top: "y" pooling_param {{ {} }} }}\n'
    text = caffe.net_text(layer.format("pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR"), shape)
    proto, model = caffe.write(text)
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    eq = caffe.folder / "eq.prototxt"
    eq.write_text(text.replace("round_mode: FLOOR", "ceil_mode: false"))
    ref = caffe.opencv(eq, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])
    assert got["y"].shape == (2, 3, 4, 4)  # floor((8 + 2 - 3) / 2) + 1; CEIL would give 5


def test_pooling_fork_ceil_mode_false_is_floor(caffe):
    """Forks' ``ceil_mode: false`` in text means FLOOR."""
    shape = (1, 2, 8, 8)
    text = caffe.net_text('layer { name: "y" type: "Pooling" bottom: "data" top: "y" '
                          "pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }\n", shape)
    proto, model = caffe.write(text)
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    ref = caffe.opencv(proto, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])
    assert got["y"].shape == (1, 2, 3, 3)


def test_lrn_across_k(caffe):
    """OpenCV ignores LRN's ``k``: equivalent net = LRN(alpha/k, k=1) then Power(scale k^-beta)."""
    shape, k, alpha, beta = (2, 6, 4, 4), 2.0, 0.4, 0.75
    text = caffe.net_text('layer { name: "y" type: "LRN" bottom: "data" top: "y" '
                          f"lrn_param {{ local_size: 5 alpha: {alpha} beta: {beta} k: {k} }} }}\n", shape)
    proto, model = caffe.write(text)
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    eq = caffe.folder / "eq.prototxt"
    eq.write_text(caffe.net_text(
        'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" '
        f"lrn_param {{ local_size: 5 alpha: {alpha / k} beta: {beta} k: 1 }} }}\n"
        f'layer {{ name: "y" type: "Power" bottom: "lrn" top: "y" power_param {{ scale: {k ** -beta!r} }} }}\n',
        shape))
    ref = caffe.opencv(eq, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


def test_reshape_negative_axis(caffe):
    """Caffe's negative Reshape axis counts from the end (-3 on 4-D = 2); OpenCV rejects
    negative axes, so its equivalent net says axis 2."""
    shape = (2, 4, 5, 6)
    text = caffe.net_text('layer { name: "y" type: "Reshape" bottom: "data" top: "y" '
                          "reshape_param { shape { dim: -1 } axis: -3 } }\n", shape)
    proto, model = caffe.write(text)
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    eq = caffe.folder / "eq.prototxt"
    eq.write_text(text.replace("axis: -3", "axis: 2"))
    ref = caffe.opencv(eq, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])
    assert got["y"].shape == (2, 4, 30)


def test_permute_partial_order(caffe):
    """Caffe appends unlisted axes in order; OpenCV needs the full order: equivalent net."""
    shape = (2, 3, 4, 5)
    text = caffe.net_text('layer { name: "y" type: "Permute" bottom: "data" top: "y" '
                          "permute_param { order: 0 order: 3 } }\n", shape)
    proto, model = caffe.write(text)
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    eq = caffe.folder / "eq.prototxt"
    eq.write_text(text.replace("order: 0 order: 3", "order: 0 order: 3 order: 1 order: 2"))
    ref = caffe.opencv(eq, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


def test_axpy(caffe):
    """SENet's Axpy (a * x + y). OpenCV computes a * bottom[2] + bottom[1]: its equivalent
    net swaps bottoms 1 and 2. (OpenCV 4.14's Axpy also fails for batch > 1: batch 1 here.)"""
    inputs = {"a": (1, 3, 1, 1), "x": (1, 3, 4, 4), "b": (1, 3, 4, 4)}
    text = caffe.net_text('layer { name: "y" type: "Axpy" bottom: "a" bottom: "x" bottom: "b" top: "y" }\n',
                          inputs=inputs)
    proto, model = caffe.write(text)
    rng = np.random.default_rng(8)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
    _, got = caffe.convert_run([proto, model], feeds)
    caffe.close(got["y"], feeds["a"] * feeds["x"] + feeds["b"])
    eq = caffe.folder / "eq.prototxt"
    eq.write_text(text.replace('bottom: "x" bottom: "b"', 'bottom: "b" bottom: "x"'))
    ref = caffe.opencv(eq, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


def test_relu6(caffe):
    shape = (2, 3, 4, 4)
    text = caffe.net_text('layer { name: "y" type: "ReLU6" bottom: "data" top: "y" }\n', shape)
    proto, model = caffe.write(text)
    feeds = {"data": (_feeds(shape)["data"] * 5).astype(np.float32)}
    _, got = caffe.convert_run([proto, model], feeds)
    ref = caffe.opencv(proto, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])
    caffe.close(got["y"], np.clip(feeds["data"], 0, 6))


def test_prelu_channel_shared(caffe):
    """A shared PReLU slope is 0-d in Caffe; OpenCV cannot load 0-d blobs, so its equivalent
    caffemodel stores the slope with shape (1,). The converter reads the 0-d original."""
    shape = (2, 3, 4, 4)
    text = caffe.net_text('layer { name: "y" type: "PReLU" bottom: "data" top: "y" '
                          "prelu_param { channel_shared: true } }\n", shape)
    proto = caffe.folder / "t.prototxt"
    proto.write_text(text)
    model = caffe.write_weights("t.caffemodel", {"y": [np.array(0.2, np.float32)]})  # 0-d
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    eq_model = caffe.write_weights("eq.caffemodel", {"y": [np.array([0.2], np.float32)]})
    ref = caffe.opencv(proto, eq_model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


@pytest.mark.parametrize("layers,inputs", [
    ('layer { name: "y" type: "Concat" bottom: "a" bottom: "b" top: "y" }', {"a": (2, 2, 3, 3), "b": (2, 3, 3, 3)}),
    ('layer { name: "y" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 2 } }',
     {"a": (2, 2, 3, 3), "b": (2, 2, 4, 3)}),
    ('layer { name: "y" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: PROD } }',
     {"a": (2, 2, 3, 3), "b": (2, 2, 3, 3)}),
    ('layer { name: "y" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }', {"a": (2, 2, 3, 3), "b": (2, 2, 3, 3)}),
    ('layer { name: "y" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
     "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 } }",
     {"a": (2, 2, 3, 3), "b": (2, 2, 3, 3), "c": (2, 2, 3, 3)}),
    ('layer { name: "y" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
     "eltwise_param { operation: MAX } }", {"a": (2, 2, 3, 3), "b": (2, 2, 3, 3), "c": (2, 2, 3, 3)}),
    ('layer { name: "y" type: "Scale" bottom: "a" bottom: "b" top: "y" scale_param { axis: 0 } }',
     {"a": (2, 3, 4, 4), "b": (2, 3)}),
    ('layer { name: "y" type: "Scale" bottom: "a" bottom: "b" top: "y" }', {"a": (2, 3, 4, 4), "b": (3, 4)}),
    ('layer { name: "y" type: "Crop" bottom: "a" bottom: "b" top: "y" }', {"a": (2, 3, 8, 8), "b": (2, 3, 5, 4)}),
    ('layer { name: "y" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { axis: 1 offset: 1 offset: 2 offset: 0 } }',
     {"a": (2, 4, 8, 8), "b": (2, 2, 5, 4)}),
    ('layer { name: "y" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { axis: 3 offset: 2 } }',
     {"a": (2, 3, 8, 8), "b": (2, 3, 8, 5)}),
], ids=["concat", "concat_axis2", "eltwise_prod", "eltwise_sum", "eltwise_sum_coeff", "eltwise_max",
        "scale_two_bottoms", "scale_two_bottoms_axis0", "crop_default", "crop_axis1_offsets", "crop_axis3"])
def test_multi_bottom_layers(caffe, layers, inputs):
    proto, model = caffe.write(caffe.net_text(layers + "\n", inputs=inputs))
    rng = np.random.default_rng(3)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
    _, got = caffe.convert_run([proto, model], feeds)
    ref = caffe.opencv(proto, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


@pytest.mark.parametrize("params,tops", [
    ("slice_param { axis: 1 slice_point: 1 slice_point: 4 }", 3),
    ("slice_param { axis: 1 }", 2),
    ("slice_param { axis: 2 slice_point: 3 }", 2),
    ("slice_param { slice_dim: 3 }", 3),
])
def test_slice(caffe, params, tops):
    names = [f"y{i}" for i in range(tops)]
    top_text = " ".join(f'top: "{n}"' for n in names)
    # one consumer per top so that every top is a net output OpenCV reports
    layers = f'layer {{ name: "slice" type: "Slice" bottom: "data" {top_text} {params} }}\n' + "".join(
        f'layer {{ name: "{n}_id" type: "Power" bottom: "{n}" top: "{n}_id" }}\n' for n in names
    )
    shape = (2, 6, 6, 6)
    proto, model = caffe.write(caffe.net_text(layers, shape))
    feeds = _feeds(shape)
    _, got = caffe.convert_run([proto, model], feeds)
    # OpenCV ignores the deprecated alias slice_dim: its equivalent net says axis
    eq = caffe.folder / "eq.prototxt"
    eq.write_text(proto.read_text().replace("slice_dim:", "axis:"))
    ref = caffe.opencv(eq, model, feeds, [f"{n}_id" for n in names])
    for n in names:
        caffe.close(got[f"{n}_id"], ref[f"{n}_id"])


def test_split_and_silence(caffe):
    """Split copies a blob; Silence consumes one so it is no net output."""
    layers = (
        'layer { name: "split" type: "Split" bottom: "data" top: "d1" top: "d2" top: "d3" }\n'
        'layer { name: "y" type: "Eltwise" bottom: "d1" bottom: "d2" top: "y" eltwise_param { operation: PROD } }\n'
        'layer { name: "quiet" type: "Silence" bottom: "d3" }\n'
    )
    shape = (2, 3, 4, 4)
    proto, model = caffe.write(caffe.net_text(layers, shape))
    feeds = _feeds(shape)
    ir_model, got = caffe.convert_run([proto, model], feeds)
    assert [v.name for v in ir_model.graph.outputs] == ["y"]
    caffe.close(got["y"], feeds["data"] ** 2)
    ref = caffe.opencv(proto, model, feeds, ["y"])
    caffe.close(got["y"], ref["y"])


def test_batchnorm_scale_pair(caffe):
    """BatchNorm (scale factor != 1) + Scale becomes one BatchNormalization; in-place blobs."""
    layers = (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "data_bn" }\n'
        'layer { name: "sc" type: "Scale" bottom: "data_bn" top: "data_bn" scale_param { bias_term: true } }\n'
        'layer { name: "y" type: "ReLU" bottom: "data_bn" top: "y" }\n'
    )
    shape = (2, 4, 3, 3)
    proto, model = caffe.write(caffe.net_text(layers, shape))
    feeds = _feeds(shape)
    ir_model, got = caffe.convert_run([proto, model], feeds)
    ops = [n.op_type for n in ir_model.graph]
    assert ops.count("BatchNormalization") == 1 and "Mul" not in ops
    ref = caffe.opencv(proto, model, feeds, ["y", "sc"])
    caffe.close(got["y"], ref["y"])


# ------------------------------------------------------------------ numpy references
# OpenCV lacks these layers (or computes them differently): the reference is numpy written
# from Caffe's layer formulas.


def _numpy_case(caffe, layers: str, shape, feeds=None, weights=None):
    proto = caffe.folder / "t.prototxt"
    proto.write_text(caffe.net_text(layers, shape))
    paths = [proto] + ([caffe.write_weights("t.caffemodel", weights)] if weights else [])
    feeds = feeds or _feeds(shape)
    _, got = caffe.convert_run(paths, feeds)
    return feeds["data"].astype(np.float64), got["y"]


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_threshold(caffe, threshold):
    x, y = _numpy_case(caffe, f'layer {{ name: "y" type: "Threshold" bottom: "data" top: "y" '
                       f"threshold_param {{ threshold: {threshold} }} }}\n", (2, 3, 4, 4))
    caffe.close(y, (x > threshold).astype(np.float32))


def test_clip(caffe):
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "Clip" bottom: "data" top: "y" '
                       "clip_param { min: -0.5 max: 0.25 } }\n", (2, 3, 4, 4))
    caffe.close(y, np.minimum(np.maximum(x, -0.5), 0.25))


@pytest.mark.parametrize("params,base,scale,shift", [
    ("", np.e, 1.0, 0.0), ("log_param { base: 10 scale: 2 shift: 0.5 }", 10.0, 2.0, 0.5),
])
def test_log(caffe, params, base, scale, shift):
    """OpenCV silently computes ln(x) whatever the parameters: numpy reference."""
    shape = (2, 3, 4, 4)
    x, y = _numpy_case(caffe, f'layer {{ name: "y" type: "Log" bottom: "data" top: "y" {params} }}\n', shape,
                       feeds=_feeds(shape, positive=True))
    caffe.close(y, np.log(shift + scale * x) / np.log(base))


def test_swish_beta(caffe):
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "Swish" bottom: "data" top: "y" '
                       "swish_param { beta: 1.7 } }\n", (2, 3, 4, 4))
    caffe.close(y, x / (1 + np.exp(-1.7 * x)))


@pytest.mark.parametrize("axis,num_axes,bshape", [(1, 1, (3,)), (1, 2, (3, 4)), (0, -1, (2, 3, 4, 5))])
def test_bias(caffe, axis, num_axes, bshape):
    """OpenCV has no Bias layer: numpy reference (left-aligned broadcast at ``axis``)."""
    b = np.random.default_rng(5).standard_normal(bshape).astype(np.float32)
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "Bias" bottom: "data" top: "y" '
                       f"bias_param {{ axis: {axis} num_axes: {num_axes} }} }}\n", (2, 3, 4, 5), weights={"y": [b]})
    caffe.close(y, x + b.reshape(bshape + (1,) * (4 - axis - len(bshape))))


@pytest.mark.parametrize("op,axis,coeff", [("SUM", 0, 1.0), ("ASUM", 1, 0.5), ("SUMSQ", 2, 1.0), ("MEAN", 1, -2.0)])
def test_reduction(caffe, op, axis, coeff):
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "Reduction" bottom: "data" top: "y" '
                       f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }} }}\n", (2, 3, 4, 5))
    flat = x.reshape(x.shape[:axis] + (-1,))
    ref = {"SUM": flat.sum(-1), "ASUM": np.abs(flat).sum(-1), "SUMSQ": (flat**2).sum(-1), "MEAN": flat.mean(-1)}[op]
    caffe.close(y, (coeff * ref).astype(np.float32))


@pytest.mark.parametrize("axis,tiles", [(1, 2), (3, 3), (0, 2)])
def test_tile(caffe, axis, tiles):
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "Tile" bottom: "data" top: "y" '
                       f"tile_param {{ axis: {axis} tiles: {tiles} }} }}\n", (2, 3, 2, 2))
    # Caffe copies the whole inner block [axis:] `tiles` times for every outer index
    outer = int(np.prod(x.shape[:axis]))
    ref = np.concatenate([x.reshape(outer, -1)] * tiles, axis=1)
    shape = list(x.shape)
    shape[axis] *= tiles
    caffe.close(y, ref.reshape(shape))


@pytest.mark.parametrize("params", ["argmax_param { axis: 1 top_k: 2 }", "argmax_param { axis: 2 out_max_val: true }",
                                    "argmax_param { top_k: 3 }", "argmax_param { top_k: 2 out_max_val: true }"])
def test_argmax(caffe, params):
    x, y = _numpy_case(caffe, f'layer {{ name: "y" type: "ArgMax" bottom: "data" top: "y" {params} }}\n', (2, 5, 3, 2))
    k = 3 if "top_k: 3" in params else 2 if "top_k: 2" in params else 1
    if "axis" in params:
        axis = int(params.split("axis: ")[1].split()[0])
        order = np.argsort(-x, axis=axis, kind="stable")
        idx = np.take(order, np.arange(k), axis=axis)
        ref = np.take_along_axis(x, idx, axis=axis) if "out_max_val" in params else idx
    else:
        flat = x.reshape(x.shape[0], -1)
        idx = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        vals = np.take_along_axis(flat, idx, axis=1)
        ref = np.stack([idx, vals], 1) if "out_max_val" in params else idx[:, None]
        ref = ref[..., None]  # (N, 1 or 2, top_k, 1)
    caffe.close(y, ref.astype(np.float32))


def test_batchnorm_batch_statistics(caffe):
    """``use_global_stats: false`` normalises with the batch's own mean and variance."""
    shape = (4, 3, 2, 2)
    c = shape[1]
    blobs = [np.zeros(c, np.float32), np.ones(c, np.float32), np.ones(1, np.float32)]
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "BatchNorm" bottom: "data" top: "y" '
                       "batch_norm_param { use_global_stats: false eps: 0.001 } }\n", shape, weights={"y": blobs})
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    caffe.close(y, (x - mean) / np.sqrt(var + 0.001))


def test_batchnorm_zero_scale_factor(caffe):
    """Caffe treats a scale-factor blob of 0 as 'no statistics': mean = var = 0."""
    shape = (2, 3, 2, 2)
    blobs = [np.full(3, 5.0, np.float32), np.full(3, 7.0, np.float32), np.zeros(1, np.float32)]
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "BatchNorm" bottom: "data" top: "y" }\n', shape,
                       weights={"y": blobs})
    caffe.close(y, x / np.sqrt(1e-5))


def test_deconvolution_dilation(caffe):
    """OpenCV 4.14 ignores dilation in Deconvolution (its output is 6x6 instead of Caffe's
    8x8 here): numpy reference, a direct scatter of every input cell through the kernel."""
    shape, cout, k, d, s, p = (2, 3, 4, 4), 2, 3, 2, 1, 0
    w = np.random.default_rng(4).standard_normal((shape[1], cout, k, k)).astype(np.float32)
    b = np.random.default_rng(6).standard_normal(cout).astype(np.float32)
    x, y = _numpy_case(caffe, 'layer { name: "y" type: "Deconvolution" bottom: "data" top: "y" '
                       f"convolution_param {{ num_output: {cout} kernel_size: {k} dilation: {d} }} }}\n", shape,
                       weights={"y": [w, b]})
    size = s * (shape[2] - 1) + d * (k - 1) + 1 - 2 * p
    ref = np.zeros((shape[0], cout, size, size)) + b[None, :, None, None]
    for i in range(shape[2]):
        for j in range(shape[3]):
            for ki in range(k):
                for kj in range(k):
                    ref[:, :, i * s + ki * d - p, j * s + kj * d - p] += x[:, :, i, j] @ w[:, :, ki, kj]
    caffe.close(y, ref)


def test_legacy_4d_blobs(caffe):
    """Legacy blobs (num/channels/height/width, right-aligned: an (N, K) weight as 1x1xNxK)."""
    shape = (2, 6)
    w = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    b = np.arange(4, dtype=np.float32)
    proto = caffe.folder / "t.prototxt"
    proto.write_text(caffe.net_text('layer { name: "y" type: "InnerProduct" bottom: "data" top: "y" '
                                    "inner_product_param { num_output: 4 } }\n", shape))
    model = caffe.write_weights("legacy.caffemodel", {"y": [w, b]}, legacy=True)
    x = _feeds(shape)["data"]
    _, got = caffe.convert_run([proto, model], {"data": x})
    caffe.close(got["y"], x.astype(np.float64) @ w.T + b)
