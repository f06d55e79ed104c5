"""Fill the zoo's Caffe prototxts with random weights and write binary ``.caffemodel`` files.

Weights are scaled by fan-in so activations stay O(1) through the net; BatchNorm statistics
are stored Caffe-style as sums with a scale factor different from 1. The caffemodel holds the
full layer definitions (so it converts alone), in the same format (V1 or V2) as the prototxt.

    from model_zoo.caffe.writer import build
    prototxt, caffemodel = build("lenet")          # cached under model_zoo.common.cache_dir()
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.common import cache_dir, cached

HERE = Path(__file__).resolve().parent
#: zoo nets committed as prototxt files
ZOO = ("lenet", "lenet_v1", "caffenet", "resnet", "squeezenet", "misc", "lenet_train_test")
#: input shapes of zoo nets whose data layers declare none
ZOO_INPUTS = {"lenet_train_test": {"data": [1, 1, 28, 28]}}
#: bump when the weights written change, so cached caffemodels are rewritten
WRITER_VERSION = 2
#: BatchNorm's stored scale factor (Caffe divides the stored sums by it)
BN_FACTOR = 0.5


# ------------------------------------------------------------------------------ ResNet text
def resnet_prototxt(
    name: str = "ResNet50",
    blocks: tuple[int, ...] = (3, 4, 6, 3),
    width: int = 64,
    size: int = 224,
    classes: int = 1000,
    bottleneck: bool = True,
) -> str:
    """A ResNet in Caffe's original naming (conv1, bn_conv1, scale_conv1, res2a_branch1, ...):
    Convolution without bias + BatchNorm + Scale(bias_term) + ReLU, Eltwise SUM shortcuts."""
    out: list[str] = [
        f'name: "{name}"',
        'layer { name: "data" type: "Input" top: "data" '
        f"input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}",
    ]

    def conv_bn(bottom: str, top: str, suffix: str, n: int, k: int, s: int, p: int, relu: bool) -> None:
        out.append(
            f'layer {{ name: "{top}" type: "Convolution" bottom: "{bottom}" top: "{top}" '
            f"convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} bias_term: false }} }}"
        )
        out.append(
            f'layer {{ name: "bn{suffix}" type: "BatchNorm" bottom: "{top}" top: "{top}" '
            "batch_norm_param { use_global_stats: true } }"
        )
        out.append(
            f'layer {{ name: "scale{suffix}" type: "Scale" bottom: "{top}" top: "{top}" '
            "scale_param { bias_term: true } }"
        )
        if relu:
            out.append(f'layer {{ name: "{top}_relu" type: "ReLU" bottom: "{top}" top: "{top}" }}')

    conv_bn("data", "conv1", "_conv1", width, 7, 2, 3, True)
    out.append(
        'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
        "pooling_param { pool: MAX kernel_size: 3 stride: 2 } }"
    )
    bottom, expansion = "pool1", 4 if bottleneck else 1
    for stage, count in enumerate(blocks):
        planes = width * 2**stage
        for i in range(count):
            tag = f"{stage + 2}{chr(ord('a') + i)}"
            stride = 2 if i == 0 and stage > 0 else 1
            if i == 0:
                conv_bn(bottom, f"res{tag}_branch1", f"{tag}_branch1", planes * expansion, 1, stride, 0, False)
                shortcut = f"res{tag}_branch1"
            else:
                shortcut = bottom
            if bottleneck:
                conv_bn(bottom, f"res{tag}_branch2a", f"{tag}_branch2a", planes, 1, stride, 0, True)
                conv_bn(f"res{tag}_branch2a", f"res{tag}_branch2b", f"{tag}_branch2b", planes, 3, 1, 1, True)
                conv_bn(f"res{tag}_branch2b", f"res{tag}_branch2c", f"{tag}_branch2c", planes * 4, 1, 1, 0, False)
                last = f"res{tag}_branch2c"
            else:
                conv_bn(bottom, f"res{tag}_branch2a", f"{tag}_branch2a", planes, 3, stride, 1, True)
                conv_bn(f"res{tag}_branch2a", f"res{tag}_branch2b", f"{tag}_branch2b", planes, 3, 1, 1, False)
                last = f"res{tag}_branch2b"
            out.append(
                f'layer {{ name: "res{tag}" type: "Eltwise" bottom: "{shortcut}" bottom: "{last}" '
                f'top: "res{tag}" }}'
            )
            out.append(f'layer {{ name: "res{tag}_relu" type: "ReLU" bottom: "res{tag}" top: "res{tag}" }}')
            bottom = f"res{tag}"
    out.append(
        f'layer {{ name: "pool5" type: "Pooling" bottom: "{bottom}" top: "pool5" '
        "pooling_param { pool: AVE global_pooling: true } }"
    )
    out.append(
        f'layer {{ name: "fc{classes}" type: "InnerProduct" bottom: "pool5" top: "fc{classes}" '
        f"inner_product_param {{ num_output: {classes} }} }}"
    )
    out.append(f'layer {{ name: "prob" type: "Softmax" bottom: "fc{classes}" top: "prob" }}')
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------- blob shapes
_NO_SHAPE = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData", "Accuracy", "Silence"}

def _conv_geometry(p: Any) -> tuple[int, int, int, int, int, int, int, int]:
    k = list(p.kernel_size) or [p.kernel_h, p.kernel_w]
    kh, kw = (k[0], k[-1]) if len(k) <= 2 else (k[0], k[1])
    s = list(p.stride) or [p.stride_h or 1, p.stride_w or 1]
    sh, sw = s[0], s[-1]
    pd = list(p.pad) or [p.pad_h, p.pad_w]
    ph, pw = pd[0], pd[-1]
    d = list(p.dilation) or [1]
    return kh, kw, sh, sw, ph, pw, d[0], d[-1]


def _pool_out(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    out = (math.ceil if ceil else math.floor)((size + 2 * p - k) / s) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return int(out)


def layer_shapes(net: Any, input_shapes: dict[str, list[int]] | None = None) -> dict[str, list[list[int]]]:
    """Layer name -> blob shapes for the weighted layers of a V2 NetParameter, tracking blob
    shapes through the layer types the zoo uses."""
    shapes: dict[str, list[int]] = dict(input_shapes or {})
    blobs: dict[str, list[list[int]]] = {}
    for layer in net.layer:
        t = layer.type
        if t in _NO_SHAPE or t.endswith("Loss"):
            continue  # data layers' tops come from input_shapes; losses produce nothing needed
        ins = [shapes[b] for b in layer.bottom]
        x = ins[0] if ins else None
        outs: list[list[int]]
        if t == "Input":
            ps = [list(s.dim) for s in layer.input_param.shape]
            outs = [ps[0] if len(ps) == 1 else ps[i] for i in range(len(layer.top))]
        elif t in ("Convolution", "Deconvolution"):
            p = layer.convolution_param
            kh, kw, sh, sw, ph, pw, dh, dw = _conv_geometry(p)
            g, n, c = p.group, p.num_output, x[1]
            if t == "Convolution":
                oh = (x[2] + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
                ow = (x[3] + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
                blobs[layer.name] = [[n, c // g, kh, kw]] + ([[n]] if p.bias_term else [])
            else:
                oh = sh * (x[2] - 1) + dh * (kh - 1) + 1 - 2 * ph
                ow = sw * (x[3] - 1) + dw * (kw - 1) + 1 - 2 * pw
                blobs[layer.name] = [[c, n // g, kh, kw]] + ([[n]] if p.bias_term else [])
            outs = [[x[0], n, oh, ow]]
        elif t == "Pooling":
            p = layer.pooling_param
            if p.global_pooling:
                outs = [[x[0], x[1], 1, 1]]
            else:
                k = p.kernel_size or p.kernel_h
                s, pd, ceil = p.stride, p.pad, p.round_mode == 0
                outs = [[x[0], x[1], _pool_out(x[2], k, s, pd, ceil), _pool_out(x[3], k, s, pd, ceil)]]
            outs = outs * len(layer.top)  # a MAX pooling's mask top has the pooled shape
        elif t == "InnerProduct":
            p = layer.inner_product_param
            k = int(np.prod(x[p.axis :]))
            blobs[layer.name] = [[k, p.num_output] if p.transpose else [p.num_output, k]]
            if p.bias_term:
                blobs[layer.name].append([p.num_output])
            outs = [x[: p.axis] + [p.num_output]]
        elif t == "BatchNorm":
            blobs[layer.name] = [[x[1]], [x[1]], [1]]
            outs = [x]
        elif t in ("Scale", "Bias"):
            p = layer.scale_param if t == "Scale" else layer.bias_param
            bias_term = t == "Scale" and layer.scale_param.bias_term
            if len(ins) == 2:  # bottom 1 is the scale/bias; only a Scale's bias is learned
                blobs[layer.name] = [ins[1]] if bias_term else []
            else:
                axis = p.axis % len(x)
                shape = x[axis:] if p.num_axes == -1 else x[axis : axis + p.num_axes]
                blobs[layer.name] = [shape] + ([shape] if bias_term else [])
            outs = [x]
        elif t == "PReLU":
            blobs[layer.name] = [[1] if layer.prelu_param.channel_shared else [x[1]]]
            outs = [x]
        elif t == "Normalize":
            blobs[layer.name] = [[1] if layer.norm_param.channel_shared else [x[1]]]
            outs = [x]
        elif t == "Concat":
            axis = layer.concat_param.axis
            outs = [list(x)]
            outs[0][axis] = sum(s[axis] for s in ins)
        elif t == "Slice":
            p = layer.slice_param
            axis = p.slice_dim if p.HasField("slice_dim") else p.axis
            n = len(layer.top)
            pts = [0, *p.slice_point, x[axis]] if p.slice_point else [i * x[axis] // n for i in range(n + 1)]
            outs = []
            for a, b in zip(pts, pts[1:]):
                s = list(x)
                s[axis] = b - a
                outs.append(s)
        elif t == "Crop":
            axis = layer.crop_param.axis
            outs = [x[:axis] + ins[1][axis:]]
        elif t == "Reshape":
            dims = list(layer.reshape_param.shape.dim)
            out = [x[i] if d == 0 else d for i, d in enumerate(dims)]
            if -1 in out:
                out[out.index(-1)] = int(np.prod(x)) // -int(np.prod(out))
            outs = [out]
        elif t == "Flatten":
            outs = [x[:1] + [int(np.prod(x[1:]))]]
        else:  # element-wise layers keep the shape
            outs = [x] * max(1, len(layer.top))
        for top, s in zip(layer.top, outs):
            shapes[top] = [int(d) for d in s]
    return blobs


# --------------------------------------------------------------------------- weights
def random_blobs(layer_type: str, shapes: list[list[int]], rng: np.random.Generator, fan_in_of: Any) -> list[np.ndarray]:
    """Random weights for one layer, scaled so activations stay O(1)."""
    if not shapes:
        return []
    if layer_type in ("Convolution", "Deconvolution", "InnerProduct"):
        w_shape = shapes[0]
        fan_in = fan_in_of(layer_type, w_shape)
        # variance 1/fan_in: each ReLU halves the signal's power, each residual Eltwise adds
        # the branch's; with He's 2/fan_in a 50-layer ResNet reaches activations ~1e4
        w = rng.standard_normal(w_shape) * math.sqrt(1.0 / fan_in)
        return [w] + [rng.standard_normal(s) * 0.1 for s in shapes[1:]]
    if layer_type == "BatchNorm":
        c = shapes[0][0]
        mean = rng.standard_normal(c) * 0.2
        var = rng.uniform(0.5, 1.5, c)
        return [mean * BN_FACTOR, var * BN_FACTOR, np.array([BN_FACTOR])]
    if layer_type == "Scale":
        out = [rng.uniform(0.5, 1.5, shapes[0])]
        return out + [rng.standard_normal(s) * 0.1 for s in shapes[1:]]
    if layer_type == "PReLU":
        return [rng.uniform(0.05, 0.3, shapes[0])]
    if layer_type == "Normalize":
        return [rng.uniform(5.0, 20.0, shapes[0])]
    return [rng.standard_normal(s) for s in shapes]


def _fan_in(layer_type: str, w_shape: list[int]) -> int:
    if layer_type == "Deconvolution":  # (C_in, C_out/g, kh, kw): each output sums over C_in*k*k/stride^2
        return max(1, w_shape[0] * w_shape[2] * w_shape[3] // 4)
    return int(np.prod(w_shape[1:]))


def _legacy_dims(shape: list[int]) -> list[int]:
    """Right-aligned 4-D legacy dims (an (N, K) weight is 1x1xNxK)."""
    return [1] * (4 - len(shape)) + list(shape)


def write_caffemodel(prototxt_text: str, out: Path, *, seed: int = 0,
                     input_shapes: dict[str, list[int]] | None = None) -> Path:
    """Write ``out`` (.caffemodel): the prototxt's definition with random weights."""
    from portanet.converters.caffe import net as caffe_net
    from portanet.converters.caffe import schema
    from portanet.converters.caffe.reader import parse_prototxt_text
    from portanet.ir.io import atomic_write_bytes

    definition = parse_prototxt_text(prototxt_text)
    v1 = bool(definition.layers)
    # shapes come from an upgraded (V2, Input-layer) copy; weights go into the original form
    upgraded = schema.NetParameter()
    upgraded.CopyFrom(definition)
    caffe_net.upgrade_v1(upgraded)
    caffe_net.upgrade_inputs(upgraded)
    shapes = layer_shapes(upgraded, input_shapes)
    types = {layer.name: layer.type for layer in upgraded.layer}
    raw = schema.RawNetParameter()
    raw.ParseFromString(definition.SerializeToString())
    rng = np.random.default_rng(seed)
    for layer in raw.layers if v1 else raw.layer:
        if layer.name not in shapes:
            continue
        for arr in random_blobs(types[layer.name], shapes[layer.name], rng, _fan_in):
            blob = layer.blobs.add()
            if v1:
                blob.num, blob.channels, blob.height, blob.width = _legacy_dims(list(arr.shape))
            else:
                blob.shape.dim.extend(arr.shape)
            blob.data = np.asarray(arr, dtype="<f4").tobytes()
    return atomic_write_bytes(out, raw.SerializeToString())


#: zoo nets generated as text (name -> builder)
GENERATED = {
    "resnet50": lambda: resnet_prototxt(),
    "mobilenet_ssd": lambda: _ssd().mobilenet_ssd_prototxt(),
    "face_ssd": lambda: _ssd().face_ssd_prototxt(),
}


def _ssd() -> Any:
    from model_zoo.caffe import ssd

    return ssd


def prototxt_path(name: str) -> Path:
    """The committed prototxt of zoo net ``name`` (the ``GENERATED`` ones are written to the cache)."""
    if name in GENERATED:
        text = GENERATED[name]()
        path = cache_dir("caffe") / f"{name}.prototxt"
        if not path.exists() or path.read_text() != text:
            from portanet.ir.io import atomic_write_bytes

            atomic_write_bytes(path, text.encode())  # a parallel test worker may be reading it
        return path
    return HERE / f"{name}.prototxt"


def build(name: str, *, seed: int = 0, input_shapes: dict[str, list[int]] | None = None) -> tuple[Path, Path]:
    """(prototxt, caffemodel) of zoo net ``name``, writing the caffemodel once into the cache."""
    prototxt = prototxt_path(name)
    out = cache_dir("caffe") / f"{name}-s{seed}-w{WRITER_VERSION}.caffemodel"
    shapes = input_shapes if input_shapes is not None else ZOO_INPUTS.get(name)
    cached(out, lambda tmp: write_caffemodel(prototxt.read_text(), tmp, seed=seed, input_shapes=shapes),
           stale=lambda p: p.stat().st_mtime < prototxt.stat().st_mtime)
    return prototxt, out


if __name__ == "__main__":  # write every zoo model and show where
    for zoo_name in ZOO:
        for path in build(zoo_name):
            print(path)
