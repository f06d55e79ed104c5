"""Pooling, exact for Caffe-style asymmetric and ceil-mode windows.

Geometry is resolved on the static sizes: pads Keras' padding="same" reproduces use it
(TF max pooling ignores padded positions and TF average pooling leaves them out of the
divisor, as ONNX does without count_include_pad); other pads become an explicit pad with
-inf (max) or zeros (average), the average then multiplied by a constant per-position map
``window / counted positions``.
"""

from __future__ import annotations

from portanet.export.graph import attr, avg_pool_scale, pool_geometry
from portanet.export.keras_build.builder import NHWC, KerasBuilder, Out, Unsupported, handler
from portanet.export.keras_build.ops.conv import _same_ok, spatial_pad


def _geometry(b: KerasBuilder, node):
    dims = b.g.shape(node.inputs[0])
    if dims is None or len(dims) != 4:
        raise Unsupported("not 2-D pooling")
    try:
        kernel, strides, dil, begins, ends = pool_geometry(node, dims[2:])
    except ValueError as exc:
        raise Unsupported(str(exc)) from exc
    if any(d != 1 for d in dil):
        raise Unsupported("dilation")
    return dims[2:], kernel, strides, begins, ends


@handler("MaxPool")
def max_pool(b: KerasBuilder, node):
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise Unsupported("Indices output")
    in_dims, kernel, strides, begins, ends = _geometry(b, node)
    x = b.get(node.inputs[0], NHWC)
    padding = "valid"
    if any(begins) or any(ends):
        if _same_ok(begins, ends, in_dims, kernel, strides, [1, 1]):
            padding = "same"
        else:
            x = b.ops.pad(x, [[0, 0], [begins[0], ends[0]], [begins[1], ends[1]], [0, 0]],
                          constant_values=float("-inf"))
    layer = b.layers.MaxPooling2D(tuple(kernel), tuple(strides), padding=padding, name=b.name())
    return b.apply(layer, x, None, NHWC)


@handler("AveragePool")
def avg_pool(b: KerasBuilder, node):
    in_dims, kernel, strides, begins, ends = _geometry(b, node)
    cip = bool(int(attr(node, "count_include_pad", 0)))
    declared = list(attr(node, "pads", [0, 0, 0, 0]))[2:]
    if attr(node, "auto_pad", "NOTSET") != "NOTSET":
        declared = ends if cip else [0, 0]
    x = b.get(node.inputs[0], NHWC)
    if (any(begins) or any(ends)) and not cip and _same_ok(begins, ends, in_dims, kernel, strides, [1, 1]) \
            and declared == ends:
        layer = b.layers.AveragePooling2D(tuple(kernel), tuple(strides), padding="same", name=b.name())
        return b.apply(layer, x, None, NHWC)
    if not all(isinstance(d, int) for d in in_dims):
        raise Unsupported("unknown spatial sizes")
    x = spatial_pad(b, x, begins, ends)
    layer = b.layers.AveragePooling2D(tuple(kernel), tuple(strides), padding="valid", name=b.name())
    scale = avg_pool_scale([int(d) for d in in_dims], kernel, strides, begins, ends, declared, cip)
    out = b.apply(layer, x, None, NHWC, tap=scale is None)
    if scale is None:
        return out
    return Out(b.ops.multiply(out.tensor, scale[:, :, None]), NHWC)


@handler("GlobalAveragePool", "GlobalMaxPool")
def global_pool(b: KerasBuilder, node):
    if b.g.rank(node.inputs[0]) != 4:
        raise Unsupported("not 2-D")
    cls = b.layers.GlobalAveragePooling2D if node.op_type == "GlobalAveragePool" else b.layers.GlobalMaxPooling2D
    return b.apply(cls(keepdims=True, name=b.name()), b.get(node.inputs[0], NHWC), None, NHWC)
