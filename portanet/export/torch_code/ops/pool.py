"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

Shapes are static here (all but the batch), so padding is resolved now: symmetric pads the
torch layer accepts stay in the layer; anything else (SAME, asymmetric, Caffe-style ceil
windows) becomes an explicit ``F.pad`` (``-inf`` for max pooling) and, for average pooling
whose divisor differs from the window size, a constant per-position factor.
"""

from __future__ import annotations

from portanet.export.graph import attr, avg_pool_scale, pool_geometry
from portanet.export.torch_code.ops.conv import _one, pad_arg
from portanet.export.torch_code.writer import TorchWriter, Unsupported, emitter


def _geometry(w: TorchWriter, node):
    dims = w.g.shape(node.inputs[0])
    if dims is None:
        raise Unsupported("unknown input rank")
    try:
        return dims[2:], *pool_geometry(node, dims[2:])
    except ValueError as exc:
        raise Unsupported(str(exc)) from exc


@emitter("MaxPool")
def max_pool(w: TorchWriter, node):
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise Unsupported("Indices output")
    spatial, kernel, strides, dil, begins, ends = _geometry(w, node)
    n = len(kernel)
    if n not in (1, 2, 3):
        raise Unsupported(f"{n}-D pooling")
    x = w.x(node.inputs[0])
    args = [f"kernel_size={_one(kernel)}", f"stride={_one(strides)}"]
    if begins == ends and all(2 * p <= k for p, k in zip(begins, kernel)):
        if any(begins):
            args.append(f"padding={_one(begins)}")
    else:
        w.uses_f = True
        x = f"F.pad({x}, {pad_arg(begins, ends)}, value=float('-inf'))"
    if any(d != 1 for d in dil):
        args.append(f"dilation={_one(dil)}")
    mod = w.module(f"nn.MaxPool{n}d({', '.join(args)})", {})
    return f"{mod}({x})"


@emitter("AveragePool")
def avg_pool(w: TorchWriter, node):
    spatial, kernel, strides, dil, begins, ends = _geometry(w, node)
    n = len(kernel)
    if n not in (1, 2, 3) or any(d != 1 for d in dil):
        raise Unsupported("dilated or >3-D average pooling")
    cip = bool(attr(node, "count_include_pad", 0))
    declared = list(attr(node, "pads", [0] * (2 * n)))[n:]
    if attr(node, "auto_pad", "NOTSET") != "NOTSET":
        declared = [0] * n if not cip else ends
    args = [f"kernel_size={_one(kernel)}", f"stride={_one(strides)}"]
    x = w.x(node.inputs[0])
    plain = begins == ends == declared and all(2 * p <= k for p, k in zip(begins, kernel))
    if plain:
        # torch's own divisor rule equals ONNX's here
        if any(begins):
            args.append(f"padding={_one(begins)}")
            if not cip:
                args.append("count_include_pad=False")
        mod = w.module(f"nn.AvgPool{n}d({', '.join(args)})", {})
        return f"{mod}({x})"
    if not all(isinstance(d, int) for d in spatial):
        raise Unsupported("unknown spatial sizes")
    scale = avg_pool_scale([int(d) for d in spatial], kernel, strides, begins, ends, declared, cip)
    w.uses_f = True
    mod = w.module(f"nn.AvgPool{n}d({', '.join(args)})", {})
    expr = f"{mod}(F.pad({x}, {pad_arg(begins, ends)}))"
    if scale is None:
        return expr
    # window mean over the zero-padded input * (window size / positions ONNX counts)
    return f"{expr} * {w.tensor(scale, 'divisor', kind='buffer')}"


@emitter("GlobalAveragePool")
def global_avg_pool(w: TorchWriter, node):
    rank = w.g.rank(node.inputs[0])
    if rank is None:
        raise Unsupported("unknown rank")
    axes = tuple(range(2, rank))
    return f"{w.x(node.inputs[0])}.mean({axes if len(axes) > 1 else axes[0]}, keepdim=True)"


@emitter("GlobalMaxPool")
def global_max_pool(w: TorchWriter, node):
    rank = w.g.rank(node.inputs[0])
    if rank is None:
        raise Unsupported("unknown rank")
    return f"{w.x(node.inputs[0])}.amax({tuple(range(2, rank))}, keepdim=True)"
