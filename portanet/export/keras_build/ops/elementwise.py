"""Element-wise arithmetic: Add/Subtract/Multiply/Maximum/Minimum layers between run-time
tensors, keras.ops with constants (broadcast to the tensor's rank and layout), unary math,
Identity and Cast."""

from __future__ import annotations

import numpy as np

from portanet.export.keras_build.builder import KerasBuilder, Out, Unsupported, handler

_LAYERS = {"Add": "Add", "Sub": "Subtract", "Mul": "Multiply", "Max": "Maximum", "Min": "Minimum"}
_OPS = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Max": "maximum",
        "Min": "minimum", "Pow": "power"}


def _const_operand(b: KerasBuilder, arr: np.ndarray, rank: int, perm):
    """A constant in the layout of the tensor it meets (a Python number when scalar)."""
    if arr.size == 1 and arr.ndim <= rank:
        return float(arr.reshape(-1)[0]) if arr.dtype.kind == "f" else int(arr.reshape(-1)[0])
    full = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    return np.ascontiguousarray(full.transpose(perm) if perm else full).astype(arr.dtype)


def _binary(op_type: str):
    def emit(b: KerasBuilder, node):
        ops = b.ops
        inputs = list(node.inputs)
        rank = b.g.rank(node.outputs[0])
        if rank is None:
            raise Unsupported("unknown rank")
        dyn = [v for v in inputs if not b.is_const(v)]
        if not dyn:
            raise Unsupported("constant inputs only")
        ranks = {b.g.rank(v) for v in dyn}
        if len(ranks) == 1 and ranks == {rank}:
            xs, perm = b.same_layout(dyn)
        else:
            xs, perm = [b.get(v, None) for v in dyn], None
        fn = getattr(ops, _OPS[op_type])
        if len(dyn) == len(inputs):
            shapes = {tuple(b.g.shape(v) or ()) for v in dyn}
            if op_type in _LAYERS and len(shapes) == 1 and len(inputs) > 1:
                layer = getattr(b.layers, _LAYERS[op_type])(name=b.name())
                return b.apply(layer, xs, None, perm)
            out = xs[0]
            for x in xs[1:]:
                out = fn(out, x)
            return Out(out, perm)
        # one run-time tensor and constants, in input order (Sub/Div/Pow care)
        it = iter(xs)
        args = [next(it) if not b.is_const(v) else _const_operand(b, b.const(v), rank, perm) for v in inputs]
        out = args[0]
        for a in args[1:]:
            out = fn(out, a)
        return Out(out, perm)

    return emit


for _op in ("Add", "Sub", "Mul", "Div", "Pow"):
    handler(_op)(_binary(_op))
for _op in ("Max", "Min", "Sum"):
    handler(_op)(_binary("Add" if _op == "Sum" else _op))


@handler("Mean")
def mean(b: KerasBuilder, node):
    xs, perm = b.same_layout(list(node.inputs))
    if len(xs) == 1:
        return Out(xs[0], perm)
    return Out(b.layers.Average(name=b.name())(xs), perm)


_UNARY = {"Sqrt": "sqrt", "Exp": "exp", "Log": "log", "Abs": "abs", "Neg": "negative", "Reciprocal": "reciprocal",
          "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos", "Sign": "sign", "Round": "round"}


def _unary(name: str):
    def emit(b: KerasBuilder, node):
        e = b.entry(node.inputs[0])
        perm = e.perm if isinstance(e, Out) else None
        return Out(getattr(b.ops, name)(b.get(node.inputs[0], perm)), perm)

    return emit


for _op, _name in _UNARY.items():
    handler(_op)(_unary(_name))


@handler("Identity")
def identity(b: KerasBuilder, node):
    return b.entry(node.inputs[0])


@handler("Cast")
def cast(b: KerasBuilder, node):
    import onnx_ir as ir

    from portanet.export.graph import attr

    to = ir.DataType(int(attr(node, "to")))
    e = b.entry(node.inputs[0])
    perm = e.perm if isinstance(e, Out) else None
    if node.inputs[0].dtype == to:
        return e
    return Out(b.ops.cast(b.get(node.inputs[0], perm), np.dtype(to.numpy()).name), perm)
