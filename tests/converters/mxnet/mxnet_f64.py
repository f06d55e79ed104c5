"""An independent float64 evaluator (PyTorch functional ops) for the ONNX ops the Gluon
zoo models lower to. Used to show that the remaining float32 differences between MXNet
and ONNX Runtime are round-off: both sit at the same distance from the float64 result."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def run_float64(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F

    env: dict[str, torch.Tensor] = {}
    for v in model.graph.initializers.values():
        arr = v.const_value.numpy()
        env[v.name] = torch.from_numpy(arr.astype(np.float64) if arr.dtype.kind == "f" else arr.copy())
    for k, arr in feeds.items():
        env[k] = torch.from_numpy(arr.astype(np.float64))

    def pads2d(node):
        p = list(_attr(node, "pads", [0, 0, 0, 0]))
        if p[0] != p[2] or p[1] != p[3]:
            raise NotImplementedError(f"asymmetric pads {p}")
        return (p[0], p[1])

    for node in model.graph:
        x = [env[v.name] if v is not None else None for v in node.inputs]
        op = node.op_type
        if op == "Conv":
            y = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=tuple(_attr(node, "strides", [1, 1])),
                         padding=pads2d(node), dilation=tuple(_attr(node, "dilations", [1, 1])),
                         groups=_attr(node, "group", 1))
        elif op == "BatchNormalization":
            y = F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=_attr(node, "epsilon", 1e-5))
        elif op == "Relu":
            y = F.relu(x[0])
        elif op == "Clip":
            y = torch.clamp(x[0], float(x[1]), float(x[2]))
        elif op == "Add":
            y = x[0] + x[1]
        elif op == "Concat":
            y = torch.cat(x, dim=_attr(node, "axis"))
        elif op == "Flatten":
            y = torch.flatten(x[0], _attr(node, "axis", 1))
        elif op == "Gemm":
            w = x[1].T if _attr(node, "transB", 0) else x[1]
            y = x[0] @ w + (x[2] if len(x) > 2 else 0)
        elif op == "GlobalAveragePool":
            y = x[0].mean(dim=(2, 3), keepdim=True)
        elif op == "Identity":
            y = x[0]
        elif op == "Pad":
            p = [int(v) for v in x[1].tolist()]
            if any(p[:2]) or any(p[4:6]):
                raise NotImplementedError("padding of N/C")
            y = F.pad(x[0], (p[3], p[7], p[2], p[6]))
        elif op in ("MaxPool", "AveragePool"):
            k = tuple(_attr(node, "kernel_shape"))
            s = tuple(_attr(node, "strides", [1, 1]))
            ceil = bool(_attr(node, "ceil_mode", 0))
            if op == "MaxPool":
                y = F.max_pool2d(x[0], k, s, padding=pads2d(node), ceil_mode=ceil)
            else:
                if any(_attr(node, "pads", [0])) or ceil:
                    raise NotImplementedError("padded or ceil-mode average pooling")
                y = F.avg_pool2d(x[0], k, s)
        else:
            raise NotImplementedError(op)
        env[node.outputs[0].name] = y
    return {v.name: env[v.name].numpy() for v in model.graph.outputs}
