"""Normalizations and Dropout: the ops whose behaviour follows ``train()`` / ``eval()``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from portanet.runtime.torch_backend.ops._util import attr, output_used
from portanet.runtime.torch_backend.registry import register


class BatchNorm(nn.Module):
    """ONNX BatchNormalization following the module's mode.

    eval: ``(x - mean) / sqrt(var + eps) * scale + bias`` with the running statistics.
    train: batch statistics; running stats updated in place. ONNX writes
    ``running = running * momentum + batch * (1 - momentum)``, torch
    ``running = running * (1 - m) + batch * m``, hence ``m = 1 - momentum``.
    """

    def __init__(self, epsilon: float, momentum: float) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.torch_momentum = 1.0 - momentum

    def forward(self, x, scale, bias, mean, var):
        # (N, C, *S): statistics per channel C
        if not self.training and (mean.requires_grad or var.requires_grad):
            # statistics computed by the graph itself: the kernel refuses gradients for them
            shape = [1, -1] + [1] * (x.dim() - 2)
            y = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.epsilon)
            return y * scale.reshape(shape) + bias.reshape(shape)
        return F.batch_norm(x, mean, var, scale, bias, self.training, self.torch_momentum, self.epsilon)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, torch_momentum={self.torch_momentum}"


def batch_norm_training(x, scale, bias, mean, var, epsilon: float, momentum: float):
    """A node with ``training_mode=1``: batch statistics, and the updated running stats as
    outputs 2 and 3 (ONNX uses the biased batch variance for both)."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    bmean = x.mean(dim=dims)
    bvar = x.var(dim=dims, unbiased=False)
    y = (x - bmean.reshape(shape)) / torch.sqrt(bvar.reshape(shape) + epsilon) * scale.reshape(shape)
    y = y + bias.reshape(shape)
    return y, mean * momentum + bmean * (1 - momentum), var * momentum + bvar * (1 - momentum)


@register("BatchNormalization", buffer_inputs=(3, 4))
def batch_norm(ctx, node, x, scale, bias, mean, var):
    eps = float(attr(node, "epsilon", 1e-5))
    momentum = float(attr(node, "momentum", 0.9))
    if int(attr(node, "training_mode", 0)):
        return ctx.unpack(ctx.call(batch_norm_training, x, scale, bias, mean, var, eps, momentum), 3)
    return ctx.module(BatchNorm(eps, momentum), x, scale, bias, mean, var, hint="batchnorm")


@register("InstanceNormalization")
def instance_norm(ctx, node, x, scale, bias):
    return ctx.call(F.instance_norm, x, weight=scale, bias=bias, eps=float(attr(node, "epsilon", 1e-5)))


def layer_norm(x: torch.Tensor, scale, bias, axis: int, eps: float) -> torch.Tensor:
    a = axis % x.dim()
    shape = x.shape[a:]
    if scale.shape == shape and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    return layer_norm_stats(x, scale, bias, axis, eps)[0]


def layer_norm_stats(x: torch.Tensor, scale, bias, axis: int, eps: float):
    """Y, Mean and InvStdDev of ONNX LayerNormalization (statistics keep reduced dims)."""
    a = axis % x.dim()
    dims = list(range(a, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    inv = torch.rsqrt(x.var(dim=dims, unbiased=False, keepdim=True) + eps)
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


@register("LayerNormalization")
def _layer_norm(ctx, node, x, scale, bias=None):
    axis = int(attr(node, "axis", -1))
    eps = float(attr(node, "epsilon", 1e-5))
    if output_used(node, 1) or output_used(node, 2):
        return ctx.unpack(ctx.call(layer_norm_stats, x, scale, bias, axis, eps), 3)
    return ctx.call(layer_norm, x, scale, bias, axis, eps)


def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    """ONNX LRN: the square sum runs over channels [c - floor((size-1)/2), c + ceil((size-1)/2)].

    (torch's local_response_norm centres even sizes the other way round.)
    """
    n, c = x.shape[0], x.shape[1]
    sq = (x * x).reshape(n, 1, c, -1)  # (N, 1, C, H*W)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad(sq, (0, 0, before, after))
    window_sum = F.avg_pool2d(sq, (size, 1), stride=1) * size  # (N, 1, C, H*W)
    div = (bias + alpha / size * window_sum).pow(beta)
    return x / div.reshape(x.shape)


@register("LRN")
def _lrn(ctx, node, x):
    return ctx.call(
        lrn, x, int(attr(node, "size")), float(attr(node, "alpha", 1e-4)), float(attr(node, "beta", 0.75)),
        float(attr(node, "bias", 1.0)),
    )


class Dropout(nn.Module):
    """Identity in eval; ``F.dropout`` (scaling by 1 / (1 - p)) in train or when the node
    itself says ``training_mode=True``. Returns (output, mask) when the mask is consumed.

    ``ratio`` / ``training_mode`` may also arrive at run time as tensors (ONNX inputs 1, 2).
    """

    def __init__(self, p: float, force_training: bool, with_mask: bool) -> None:
        super().__init__()
        self.p = p
        self.force_training = force_training
        self.with_mask = with_mask

    def forward(self, x, ratio=None, training_mode=None):
        p = float(ratio) if ratio is not None else self.p
        force = bool(training_mode) if training_mode is not None else self.force_training
        train = (self.training or force) and p > 0
        if not self.with_mask:
            return F.dropout(x, p, training=True) if train else x
        if not train:
            return x, torch.ones_like(x, dtype=torch.bool)
        keep = torch.rand_like(x, dtype=torch.float32) >= p
        return x * keep / (1.0 - p), keep

    def extra_repr(self) -> str:
        return f"p={self.p}, force_training={self.force_training}"


@register("Dropout", static_inputs=(1, 2))
def dropout(ctx, node, x, ratio=None, training_mode=None):
    p = float(attr(node, "ratio", 0.5)) if ctx.opset < 12 else 0.5
    if ratio is not None and ctx.const(ratio) is not None:
        p, ratio = ctx.floats(ratio)[0], None
    force = False
    if training_mode is not None and ctx.const(training_mode) is not None:
        force, training_mode = bool(ctx.ints(training_mode)[0]), None
    with_mask = output_used(node, 1)
    args = [x] if ratio is None and training_mode is None else [x, ratio, training_mode]
    out = ctx.module(Dropout(p, force, with_mask), *args, hint="dropout")
    return ctx.unpack(out, 2) if with_mask else out
