"""Padding arithmetic shared by convolutions and pools (ONNX pads / auto_pad -> torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def same_pads(
    in_sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int], auto_pad: str
) -> list[int]:
    """ONNX SAME_UPPER / SAME_LOWER: pads [b1..bn, e1..en] making out = ceil(in / stride)."""
    begins, ends = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = math.ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        # SAME_UPPER puts the extra padding at the end, SAME_LOWER at the beginning
        begins.append(small if auto_pad == "SAME_UPPER" else big)
        ends.append(big if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def torch_pad_order(pads: list[int]) -> list[int]:
    """ONNX [b1, b2, .., e1, e2, ..] over the spatial axes -> F.pad's (b_last, e_last, ...)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def symmetric(pads: list[int]) -> bool:
    n = len(pads) // 2
    return pads[:n] == pads[n:]


def pad_spatial(x: torch.Tensor, pads: list[int], value: float = 0.0) -> torch.Tensor:
    if not any(pads):
        return x
    return F.pad(x, torch_pad_order(pads), value=value)
