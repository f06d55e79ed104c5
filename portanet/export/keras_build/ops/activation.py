"""Activations and softmax: ReLU, Activation, LeakyReLU, ELU, PReLU, Softmax layers."""

from __future__ import annotations

import numpy as np

from portanet.export.graph import attr
from portanet.export.keras_build.builder import KerasBuilder, Out, Unsupported, handler


def _same(b: KerasBuilder, v):
    e = b.entry(v)
    perm = e.perm if isinstance(e, Out) else None
    return b.get(v, perm), perm


def _layer(make):
    def emit(b: KerasBuilder, node):
        x, perm = _same(b, node.inputs[0])
        return b.apply(make(b, node), x, None, perm)

    return emit


handler("Relu")(_layer(lambda b, n: b.layers.ReLU(name=b.name())))
for _op, _act in {"Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus", "Softsign": "softsign",
                  "HardSwish": "hard_swish", "Mish": "mish"}.items():
    handler(_op)(_layer(lambda b, n, a=_act: b.layers.Activation(a, name=b.name())))
handler("LeakyRelu")(_layer(lambda b, n: b.layers.LeakyReLU(negative_slope=float(attr(n, "alpha", 0.01)),
                                                            name=b.name())))
handler("Elu")(_layer(lambda b, n: b.layers.ELU(alpha=float(attr(n, "alpha", 1.0)), name=b.name())))


@handler("Gelu")
def gelu(b: KerasBuilder, node):
    x, perm = _same(b, node.inputs[0])
    approx = attr(node, "approximate", "none") == "tanh"
    return Out(b.ops.gelu(x, approximate=approx), perm)


@handler("Erf")
def erf(b: KerasBuilder, node):
    x, perm = _same(b, node.inputs[0])
    return Out(b.ops.erf(x), perm)


@handler("Clip")
def clip(b: KerasBuilder, node):
    x, perm = _same(b, node.inputs[0])
    bounds = []
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None or not v.name:
            bounds.append(None)
            continue
        c = b.const(v)
        if c is None:
            raise Unsupported("run-time bounds")
        bounds.append(float(c.reshape(-1)[0]))
    if bounds[0] == 0.0 and bounds[1] is not None:
        return b.apply(b.layers.ReLU(max_value=bounds[1], name=b.name()), x, None, perm)
    lo = bounds[0] if bounds[0] is not None else float("-inf")
    hi = bounds[1] if bounds[1] is not None else float("inf")
    return Out(b.ops.clip(x, lo, hi), perm)


@handler("HardSigmoid")
def hard_sigmoid(b: KerasBuilder, node):
    x, perm = _same(b, node.inputs[0])
    a, c = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    return Out(b.ops.clip(x * a + c, 0.0, 1.0), perm)


@handler("Softmax", "LogSoftmax")
def softmax(b: KerasBuilder, node):
    x, perm = _same(b, node.inputs[0])
    rank = b.g.rank(node.inputs[0])
    if rank is None:
        raise Unsupported("unknown rank")
    axis = int(attr(node, "axis", -1)) % rank
    kaxis = (perm or tuple(range(rank))).index(axis)
    if node.op_type == "LogSoftmax":
        return Out(b.ops.log_softmax(x, axis=kaxis), perm)
    return b.apply(b.layers.Softmax(axis=kaxis, name=b.name()), x, None, perm)


@handler("PRelu")
def prelu(b: KerasBuilder, node):
    xv, sv = node.inputs
    slope = b.const(sv)
    rank = b.g.rank(xv)
    if slope is None or rank is None:
        raise Unsupported("run-time slope or unknown rank")
    x, perm = _same(b, xv)
    full = slope.reshape((1,) * (rank - slope.ndim) + slope.shape)  # ONNX broadcasting
    if perm:
        full = full.transpose(perm)
    dims = b.g.shape(xv)
    kdims = [dims[p] for p in perm] if perm else dims
    shared = [i for i in range(1, rank) if full.shape[i] == 1 and kdims[i] != 1]
    alpha = np.broadcast_to(full[0], [1 if i in shared else kdims[i] for i in range(1, rank)])
    layer = b.layers.PReLU(shared_axes=shared or None, name=b.name())
    return b.apply(layer, x, [np.ascontiguousarray(alpha)], perm)
