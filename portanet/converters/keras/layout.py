"""Axis permutations between a Keras tensor and its IR value.

Every Keras tensor is held in the IR as ``ir = np.transpose(keras, perm)``. Channels-last
image tensors are kept channels-first inside the IR (``perm = (0, r-1, 1, ..., r-2)``);
everything else keeps the Keras order (the identity permutation).
"""

from __future__ import annotations

from collections.abc import Sequence

Perm = tuple[int, ...]


def identity(rank: int) -> Perm:
    return tuple(range(rank))


def to_channels_first(rank: int) -> Perm:
    """Keras channels-last (N, *spatial, C) -> IR (N, C, *spatial)."""
    if rank < 3:
        return identity(rank)
    return (0, rank - 1, *range(1, rank - 1))


def for_data_format(data_format: str | None, rank: int) -> Perm:
    """The IR layout an image layer wants for an input of ``rank`` in ``data_format``:
    the IR is always channels-first, so channels_last tensors are permuted."""
    if data_format == "channels_first":
        return identity(rank)
    return to_channels_first(rank)


def inverse(perm: Sequence[int]) -> Perm:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def between(src: Sequence[int], dst: Sequence[int]) -> Perm:
    """The Transpose perm turning a value held with ``src`` into one held with ``dst``."""
    inv = inverse(src)
    return tuple(inv[d] for d in dst)


def ir_axis(keras_axis: int, perm: Sequence[int]) -> int:
    """Where Keras axis ``keras_axis`` (may be negative) lives in an IR value held with ``perm``."""
    rank = len(perm)
    ax = keras_axis + rank if keras_axis < 0 else keras_axis
    if not 0 <= ax < rank:
        raise ValueError(f"axis {keras_axis} is out of range for rank {rank}")
    return inverse(perm)[ax]


def is_identity(perm: Sequence[int]) -> bool:
    return tuple(perm) == tuple(range(len(perm)))
