"""Element-wise arithmetic, variadic Max/Min/Sum/Mean, Identity and Cast."""

from __future__ import annotations

from portanet.export.graph import attr
from portanet.export.torch_code.writer import TorchWriter, Unsupported, emitter, torch_dtype

_BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}
_UNARY = {
    "Sqrt": "torch.sqrt", "Exp": "torch.exp", "Log": "torch.log", "Abs": "torch.abs", "Neg": "torch.neg",
    "Reciprocal": "torch.reciprocal", "Floor": "torch.floor", "Ceil": "torch.ceil", "Sin": "torch.sin",
    "Cos": "torch.cos", "Sign": "torch.sign", "Round": "torch.round",
}


def _binary(op: str):
    def emit(w: TorchWriter, node):
        a, b = node.inputs
        if op == "/" and w.g.static_shape(a) is not None and a.dtype is not None and not a.dtype.is_floating_point():
            raise Unsupported("integer division")
        return f"{_operand(w, a)} {op} {_operand(w, b)}"

    return emit


def _operand(w: TorchWriter, v) -> str:
    s = w.x(v)
    return f"({s})" if s.startswith("-") else s


for _op, _sym in _BINARY.items():
    emitter(_op)(_binary(_sym))


def _unary(fn: str):
    return lambda w, node: f"{fn}({w.x(node.inputs[0])})"


for _op, _fn in _UNARY.items():
    emitter(_op)(_unary(_fn))


@emitter("Pow")
def pow_(w: TorchWriter, node):
    return f"torch.pow({w.x(node.inputs[0])}, {w.x(node.inputs[1])})"


def _variadic(fn: str, mean: bool = False):
    def emit(w: TorchWriter, node):
        xs = [w.x(v) for v in node.inputs]
        if len(xs) == 1:
            return xs[0]
        if fn == "+":
            expr = " + ".join(xs)
            return f"({expr}) / {len(xs)}" if mean else expr
        # a Python number cannot be torch.maximum's argument: clamp by it instead
        nums = [x for x in xs if _is_number(x)]
        tensors = [x for x in xs if not _is_number(x)]
        expr = tensors[0]
        for x in tensors[1:]:
            expr = f"{fn}({expr}, {x})"
        for x in nums:
            bound = "min" if fn == "torch.maximum" else "max"
            expr = f"torch.clamp({expr}, {bound}={x})"
        return expr

    return emit


def _is_number(expr: str) -> bool:
    try:
        float(expr.replace("float(", "").rstrip(")").strip("'"))
    except ValueError:
        return False
    return True


emitter("Max")(_variadic("torch.maximum"))
emitter("Min")(_variadic("torch.minimum"))
emitter("Sum")(_variadic("+"))
emitter("Mean")(_variadic("+", mean=True))


@emitter("Identity")
def identity(w: TorchWriter, node):
    return w.x(node.inputs[0])


@emitter("Cast")
def cast(w: TorchWriter, node):
    import onnx_ir as ir

    to = ir.DataType(int(attr(node, "to")))
    try:
        dtype = torch_dtype(to.numpy())
    except (TypeError, ValueError) as exc:
        raise Unsupported(f"cast to {to.name}") from exc
    if node.inputs[0].dtype == to:
        return w.x(node.inputs[0])
    return f"{w.x(node.inputs[0])}.to({dtype})"
