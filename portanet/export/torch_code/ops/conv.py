"""Convolutions and matrix products: Conv, ConvTranspose, Gemm, MatMul."""

from __future__ import annotations

import numpy as np

from portanet.export.graph import attr, pool_geometry
from portanet.export.torch_code.writer import TorchWriter, Unsupported, emitter


def pad_arg(begins: list[int], ends: list[int]) -> str:
    """Spatial begin/end pads -> F.pad's tuple (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [b, e]
    return "(" + ", ".join(map(str, out)) + ")"


def _pads(w: TorchWriter, node, n: int) -> tuple[list[int], list[int]]:
    """Begin/end pads of a Conv over its static input sizes (SAME resolved)."""
    dims = w.g.shape(node.inputs[0]) or [None] * (n + 2)
    try:
        _, _, _, b, e = pool_geometry(node, dims[2:], list(w.const(node.inputs[1]).shape[2:]))
    except ValueError as exc:
        raise Unsupported(str(exc)) from exc
    return b, e


@emitter("Conv")
def conv(w: TorchWriter, node):
    weight = w.const(node.inputs[1])
    if weight is None or w.g.kind(node.inputs[1]) == "const" and weight.dtype.kind != "f":
        raise Unsupported("run-time weights")
    n = weight.ndim - 2
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-D convolution")
    bias = w.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if len(node.inputs) > 2 and node.inputs[2] is not None and bias is None:
        raise Unsupported("run-time bias")
    groups = int(attr(node, "group", 1))
    strides = list(attr(node, "strides", [1] * n))
    dil = list(attr(node, "dilations", [1] * n))
    begins, ends = _pads(w, node, n)
    cout, cin = weight.shape[0], weight.shape[1] * groups
    args = [str(cin), str(cout), f"kernel_size={_one(weight.shape[2:])}"]
    if any(s != 1 for s in strides):
        args.append(f"stride={_one(strides)}")
    x = w.x(node.inputs[0])
    if begins == ends:
        if any(begins):
            args.append(f"padding={_one(begins)}")
    else:
        w.uses_f = True
        x = f"F.pad({x}, {pad_arg(begins, ends)})"
    if any(d != 1 for d in dil):
        args.append(f"dilation={_one(dil)}")
    if groups != 1:
        args.append(f"groups={groups}")
    if bias is None:
        args.append("bias=False")
    mod = w.module(f"nn.Conv{n}d({', '.join(args)})", {"weight": weight, "bias": bias})
    return f"{mod}({x})"


@emitter("ConvTranspose")
def conv_transpose(w: TorchWriter, node):
    weight = w.const(node.inputs[1])
    if weight is None:
        raise Unsupported("run-time weights")
    n = weight.ndim - 2
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-D transposed convolution")
    if attr(node, "output_shape") is not None or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise Unsupported("output_shape / auto_pad")
    bias = w.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    groups = int(attr(node, "group", 1))
    strides = list(attr(node, "strides", [1] * n))
    dil = list(attr(node, "dilations", [1] * n))
    pads = list(attr(node, "pads", [0] * (2 * n)))
    outpad = list(attr(node, "output_padding", [0] * n))
    begins, ends = pads[:n], pads[n:]
    cin, cout = weight.shape[0], weight.shape[1] * groups
    args = [str(cin), str(cout), f"kernel_size={_one(weight.shape[2:])}"]
    if any(s != 1 for s in strides):
        args.append(f"stride={_one(strides)}")
    crop = None
    if begins == ends:
        if any(begins):
            args.append(f"padding={_one(begins)}")
    else:
        # torch pads symmetrically: transpose without padding, then crop (N, C, *S)
        crop = ", ".join([":", ":"] + [f"{b}:{-e if e else ''}" for b, e in zip(begins, ends)])
    if any(outpad):
        args.append(f"output_padding={_one(outpad)}")
    if groups != 1:
        args.append(f"groups={groups}")
    if any(d != 1 for d in dil):
        args.append(f"dilation={_one(dil)}")
    if bias is None:
        args.append("bias=False")
    mod = w.module(f"nn.ConvTranspose{n}d({', '.join(args)})", {"weight": weight, "bias": bias})
    expr = f"{mod}({w.x(node.inputs[0])})"
    return f"{expr}[{crop}]" if crop else expr


@emitter("Gemm")
def gemm(w: TorchWriter, node):
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    weight = w.const(b)
    xa = w.x(a) + (".t()" if ta else "")
    if weight is None or weight.ndim != 2:
        expr = f"{xa} @ {w.x(b)}{'.t()' if tb else ''}"
        expr = expr if alpha == 1.0 else f"{alpha!r} * ({expr})"
        if c is not None and c.name:
            expr = f"{expr} + {w.x(c)}" if beta == 1.0 else f"{expr} + {beta!r} * {w.x(c)}"
        return expr
    weight = weight if tb else weight.T  # nn.Linear keeps (out, in)
    if alpha != 1.0:
        weight = weight * np.float32(alpha)
    bias = w.const(c) if c is not None and c.name else None
    extra = ""
    if bias is not None and bias.size == weight.shape[0] and bias.ndim <= 2:
        bias = bias.reshape(-1) * np.float32(beta) if beta != 1.0 else bias.reshape(-1)
    elif c is not None and c.name:
        extra = f" + {w.x(c)}" if beta == 1.0 else f" + {beta!r} * {w.x(c)}"
        bias = None
    args = f"{weight.shape[1]}, {weight.shape[0]}" + ("" if bias is not None else ", bias=False")
    mod = w.module(f"nn.Linear({args})", {"weight": np.ascontiguousarray(weight), "bias": bias})
    return f"{mod}({xa}){extra}"


@emitter("MatMul")
def matmul(w: TorchWriter, node):
    a, b = node.inputs
    weight = w.const(b)
    if weight is None or weight.ndim != 2 or w.g.kind(b) != "param":
        return f"torch.matmul({w.x(a)}, {w.x(b)})"
    mod = w.module(f"nn.Linear({weight.shape[0]}, {weight.shape[1]}, bias=False)",
                   {"weight": np.ascontiguousarray(weight.T)})
    return f"{mod}({w.x(a)})"


def _one(v) -> str:
    """A kernel/stride/pad argument: one number when all axes agree."""
    v = [int(x) for x in v]
    return str(v[0]) if len(set(v)) == 1 else "(" + ", ".join(map(str, v)) + ")"
