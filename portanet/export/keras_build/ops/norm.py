"""BatchNormalization, LRN and Dropout."""

from __future__ import annotations

from portanet.export.graph import attr
from portanet.export.keras_build.builder import NHWC, KerasBuilder, Out, Unsupported, handler


@handler("BatchNormalization")
def batch_norm(b: KerasBuilder, node):
    x, *stats = node.inputs[:5]
    arrs = [b.const(v) for v in stats]
    if any(a is None for a in arrs) or int(attr(node, "training_mode", 0)):
        raise Unsupported("run-time statistics or training_mode")
    rank = b.g.rank(x)
    e = b.entry(x)
    perm = e.perm if isinstance(e, Out) else None
    if rank == 4 and perm is None:
        perm = NHWC
    t = b.get(x, perm)
    axis = (perm or tuple(range(rank or 2))).index(1)
    # Keras' momentum has ONNX's meaning: moving = moving * momentum + batch * (1 - momentum)
    layer = b.layers.BatchNormalization(axis=axis, epsilon=float(attr(node, "epsilon", 1e-5)),
                                        momentum=float(attr(node, "momentum", 0.9)), name=b.name())
    return b.apply(layer, t, arrs, perm)


@handler("LRN")
def lrn(b: KerasBuilder, node):
    """Across channels: x / (bias + alpha / size * sum of squares in the window) ** beta."""
    ops = b.ops
    size = int(attr(node, "size"))
    alpha, beta, bias = (float(attr(node, k, d)) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    x = b.get(node.inputs[0], NHWC)
    channels = (b.g.shape(node.inputs[0]) or [None, None])[1]
    if not isinstance(channels, int):
        raise Unsupported("unknown channel count")
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [lo, hi]])
    total = sq[:, :, :, 0:channels]
    for i in range(1, size):
        total = total + sq[:, :, :, i:i + channels]
    return Out(ops.divide(x, ops.power(total * (alpha / size) + bias, beta)), NHWC)


@handler("Dropout")
def dropout(b: KerasBuilder, node):
    ratio = b.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    p = float(ratio.reshape(-1)[0]) if ratio is not None else float(attr(node, "ratio", 0.5))
    e = b.entry(node.inputs[0])
    perm = e.perm if isinstance(e, Out) else None
    return b.apply(b.layers.Dropout(p, name=b.name()), b.get(node.inputs[0], perm), None, perm)
