"""Normalizations and Dropout: BatchNormalization, LRN, InstanceNormalization, Dropout."""

from __future__ import annotations

from portanet.export.graph import attr
from portanet.export.torch_code.writer import TorchWriter, Unsupported, emitter


@emitter("BatchNormalization")
def batch_norm(w: TorchWriter, node):
    x, scale, bias, mean, var = node.inputs[:5]
    arrs = [w.const(v) for v in (scale, bias, mean, var)]
    if any(a is None for a in arrs) or int(attr(node, "training_mode", 0)):
        raise Unsupported("run-time statistics or training_mode")
    rank = w.g.rank(x)
    dim = {2: 1, 3: 1, 4: 2, 5: 3}.get(rank or 0)
    if dim is None:
        raise Unsupported(f"rank-{rank} input")
    eps = float(attr(node, "epsilon", 1e-5))
    # ONNX: running = running * momentum + batch * (1 - momentum); torch uses 1 - momentum
    momentum = 1.0 - float(attr(node, "momentum", 0.9))
    args = [str(arrs[0].shape[0])]
    if abs(eps - 1e-5) > 1e-12:
        args.append(f"eps={eps!r}")
    if abs(momentum - 0.1) > 1e-7:
        args.append(f"momentum={round(momentum, 7)!r}")
    state = {"weight": arrs[0], "bias": arrs[1], "running_mean": arrs[2], "running_var": arrs[3]}
    mod = w.module(f"nn.BatchNorm{dim}d({', '.join(args)})", state)
    return f"{mod}({w.x(x)})"


@emitter("InstanceNormalization")
def instance_norm(w: TorchWriter, node):
    x, scale, bias = node.inputs
    s, b = w.const(scale), w.const(bias)
    rank = w.g.rank(x)
    dim = {3: 1, 4: 2, 5: 3}.get(rank or 0)
    if s is None or b is None or dim is None:
        raise Unsupported("run-time scale/bias or unknown rank")
    eps = float(attr(node, "epsilon", 1e-5))
    mod = w.module(f"nn.InstanceNorm{dim}d({s.shape[0]}, eps={eps!r}, affine=True)", {"weight": s, "bias": b})
    return f"{mod}({w.x(x)})"


@emitter("LRN")
def lrn(w: TorchWriter, node):
    size = int(attr(node, "size"))
    if size % 2 == 0:
        # torch centres an even window one channel later than ONNX
        raise Unsupported("even size")
    alpha, beta, bias = (float(attr(node, k, d)) for k, d in (("alpha", 1e-4), ("beta", 0.75), ("bias", 1.0)))
    mod = w.module(f"nn.LocalResponseNorm({size}, alpha={alpha!r}, beta={beta!r}, k={bias!r})", {})
    return f"{mod}({w.x(node.inputs[0])})"


@emitter("Dropout")
def dropout(w: TorchWriter, node):
    ratio = w.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    p = float(ratio.reshape(-1)[0]) if ratio is not None else float(attr(node, "ratio", 0.5))
    if len(node.outputs) > 1 and node.outputs[1].uses():
        raise Unsupported("mask output")
    mod = w.module(f"nn.Dropout({round(p, 7)!r})", {})
    return f"{mod}({w.x(node.inputs[0])})"
