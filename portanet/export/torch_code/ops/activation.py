"""Activations and (log-)softmax."""

from __future__ import annotations

from portanet.export.graph import attr
from portanet.export.torch_code.writer import TorchWriter, Unsupported, emitter, literal

_TORCH = {"Relu": "torch.relu", "Sigmoid": "torch.sigmoid", "Tanh": "torch.tanh", "Erf": "torch.erf"}
_F = {"Softsign": "F.softsign", "HardSwish": "F.hardswish", "Mish": "F.mish", "Softplus": "F.softplus"}


def _unary(fn: str):
    def emit(w: TorchWriter, node):
        if fn.startswith("F."):
            w.uses_f = True
        return f"{fn}({w.x(node.inputs[0])})"

    return emit


for _op, _fn in {**_TORCH, **_F}.items():
    emitter(_op)(_unary(_fn))


@emitter("LeakyRelu")
def leaky_relu(w: TorchWriter, node):
    w.uses_f = True
    return f"F.leaky_relu({w.x(node.inputs[0])}, {literal(float(attr(node, 'alpha', 0.01)))})"


@emitter("Elu")
def elu(w: TorchWriter, node):
    w.uses_f = True
    return f"F.elu({w.x(node.inputs[0])}, {literal(float(attr(node, 'alpha', 1.0)))})"


@emitter("Selu")
def selu(w: TorchWriter, node):
    alpha = float(attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(attr(node, "gamma", 1.05070102214813232421875))
    w.uses_f = True
    return f"{literal(gamma)} * F.elu({w.x(node.inputs[0])}, {literal(alpha)})"


@emitter("HardSigmoid")
def hard_sigmoid(w: TorchWriter, node):
    a, b = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    return f"torch.clamp({w.x(node.inputs[0])} * {literal(a)} + {literal(b)}, 0.0, 1.0)"


@emitter("Gelu")
def gelu(w: TorchWriter, node):
    w.uses_f = True
    approx = attr(node, "approximate", "none")
    extra = "" if approx == "none" else f', approximate="{approx}"'
    return f"F.gelu({w.x(node.inputs[0])}{extra})"


@emitter("Clip")
def clip(w: TorchWriter, node):
    bounds = []
    for i in (1, 2):
        v = node.inputs[i] if len(node.inputs) > i else None
        if v is None or not v.name:
            bounds.append("None")
            continue
        c = w.const(v)
        if c is None:
            raise Unsupported("run-time bounds")
        bounds.append(literal(c.reshape(-1)[0].item()))
    if bounds == ["0.0", "6.0"]:
        w.uses_f = True
        return f"F.relu6({w.x(node.inputs[0])})"
    return f"torch.clamp({w.x(node.inputs[0])}, {bounds[0]}, {bounds[1]})"


@emitter("PRelu")
def prelu(w: TorchWriter, node):
    x, slope = node.inputs
    s = w.x(slope)
    return f"torch.where({w.x(x)} >= 0, {w.x(x)}, {w.x(x)} * {s})"


def _softmax(fn: str):
    def emit(w: TorchWriter, node):
        return f"{fn}({w.x(node.inputs[0])}, {int(attr(node, 'axis', -1))})"

    return emit


emitter("Softmax")(_softmax("torch.softmax"))
emitter("LogSoftmax")(_softmax("torch.log_softmax"))
__all__ = ["Unsupported"]
