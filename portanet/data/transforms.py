"""Preparing samples for a model input: layout (NCHW/NHWC/flat) and mean/std normalisation.

The layout follows the model, not the data: MNIST's (N, 28, 28) images feed a model input
declared (N, 1, 28, 28) by inserting the channel axis first, an input (N, 28, 28, 1) by
inserting it last, (N, 784) by flattening; (N, H, W, C) images are transposed for an NCHW
input and vice versa. ``plan_layout`` picks the first rule that fits the declared shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from portanet.errors import InvalidInputError

Dim = int | str | None


def _fits(shape: Sequence[int], dims: Sequence[Dim]) -> bool:
    """Does a sample shape fit the declared per-sample dims (non-int dims accept anything)?"""
    return len(shape) == len(dims) and all(not isinstance(d, int) or d == s for s, d in zip(shape, dims))


# Layout rules in order of preference: name -> (sample shape -> new sample shape, batch transform).
_Rule = tuple[Callable[[tuple[int, ...]], tuple[int, ...] | None], Callable[[np.ndarray], np.ndarray]]
_RULES: dict[str, _Rule] = {
    "as-is": (lambda s: s, lambda x: x),
    # (N, H, W) -> (N, 1, H, W)
    "add-channel-first": (lambda s: (1, *s) if len(s) == 2 else None, lambda x: x[:, None]),
    # (N, H, W) -> (N, H, W, 1)
    "add-channel-last": (lambda s: (*s, 1) if len(s) == 2 else None, lambda x: x[..., None]),
    # (N, H, W, C) -> (N, C, H, W)
    "nhwc-to-nchw": (lambda s: (s[2], s[0], s[1]) if len(s) == 3 else None, lambda x: x.transpose(0, 3, 1, 2)),
    # (N, C, H, W) -> (N, H, W, C)
    "nchw-to-nhwc": (lambda s: (s[1], s[2], s[0]) if len(s) == 3 else None, lambda x: x.transpose(0, 2, 3, 1)),
    # (N, ...) -> (N, prod(...))
    "flatten": (lambda s: (int(np.prod(s)),) if len(s) > 1 else None, lambda x: x.reshape(len(x), -1)),
}


@dataclass(frozen=True)
class Layout:
    """How samples of ``sample_shape`` become model inputs of ``input_dims``."""

    rule: str
    sample_shape: tuple[int, ...]
    model_shape: tuple[int, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, *sample_shape) -> (N, *model_shape), contiguous."""
        return np.ascontiguousarray(_RULES[self.rule][1](x))


def plan_layout(sample_shape: Sequence[int], input_dims: Sequence[Dim] | None, *,
                where: str = "data", input_name: str = "input") -> Layout:
    """Choose the layout rule that turns samples of ``sample_shape`` into the model's input.

    ``input_dims`` is the model input's declared shape including the batch dimension (symbolic
    or unknown dims accept any size); ``None`` (undeclared) takes the samples as they are.
    Raises ``InvalidInputError`` when no rule fits.
    """
    s = tuple(int(d) for d in sample_shape)
    if input_dims is None:
        return Layout("as-is", s, s)
    want = list(input_dims)[1:]
    for name, (shape_fn, _) in _RULES.items():
        new = shape_fn(s)
        if new is not None and _fits(new, want):
            return Layout(name, s, tuple(new))
    shown = "x".join(str(d) if isinstance(d, int) else str(d or "?") for d in input_dims)
    raise InvalidInputError(
        f"{where}: samples of shape {'x'.join(map(str, s))} cannot feed model input '{input_name}' of shape "
        f"{shown} (tried as-is, NCHW/NHWC channel and transpose, flattened)"
    )


@dataclass
class Normalizer:
    """``(x * scale - mean) / std``; ``mean``/``std`` are scalars or per channel of the model input.

    Integer images are scaled to [0, 1] first (``scale = 1/255`` for uint8), so user-supplied
    statistics use the usual units (MNIST: mean 0.1307, std 0.3081).
    """

    mean: list[float]
    std: list[float]
    scale: float = 1.0
    #: the axis of the model input that per-channel statistics apply to (1 for NCHW, -1 for NHWC)
    channel_axis: int = 1

    @staticmethod
    def scale_for(x: np.ndarray) -> float:
        if x.dtype == np.uint8:
            return 1.0 / 255.0
        if x.dtype == np.uint16:
            return 1.0 / 65535.0
        return 1.0

    @classmethod
    def fit(cls, x: np.ndarray) -> Normalizer:
        """Scalar mean and std of the scaled samples (float64 accumulation)."""
        scale = cls.scale_for(x)
        xs = x.astype(np.float64) * scale
        std = float(xs.std())
        return cls([float(xs.mean())], [std if std > 0 else 1.0], scale)

    @classmethod
    def identity(cls, x: np.ndarray) -> Normalizer:
        """Only the integer-to-[0, 1] scaling, no centring."""
        return cls([0.0], [1.0], cls.scale_for(x))

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "std": self.std, "scale": self.scale, "channel_axis": self.channel_axis}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Normalizer:
        """The inverse of ``to_dict`` (e.g. the normalisation a trained model's metadata records)."""
        return cls([float(v) for v in d["mean"]], [float(v) for v in d["std"]],  # type: ignore[union-attr]
                   float(d.get("scale", 1.0)), int(d.get("channel_axis", 1)))  # type: ignore[arg-type]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """float32 normalised copy of model-layout samples ``x`` (N, ...)."""
        out = x.astype(np.float32) * np.float32(self.scale)
        if len(self.mean) == 1:
            out -= np.float32(self.mean[0])
            out /= np.float32(self.std[0])
            return out
        axis = self.channel_axis % x.ndim
        if x.shape[axis] != len(self.mean) or len(self.std) != len(self.mean):
            raise InvalidInputError(
                f"{len(self.mean)} mean / {len(self.std)} std values given for {x.shape[axis]} channel(s) "
                f"(axis {axis} of the model input {list(x.shape[1:])})"
            )
        shape = [1] * x.ndim
        shape[axis] = len(self.mean)
        out -= np.asarray(self.mean, np.float32).reshape(shape)
        out /= np.asarray(self.std, np.float32).reshape(shape)
        return out


def input_normalizer(x_train: np.ndarray, layout: Layout, *, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, normalize: bool = True) -> Normalizer:
    """The input normalisation ``portanet train`` applies (and ``portanet quantize`` reuses).

    Given ``mean``/``std`` win; otherwise ``normalize`` computes them on the training samples
    ``x_train``; ``normalize=False`` only scales integer images to [0, 1]. Per-channel values
    apply to the model input's channel axis (last for NHWC layouts).
    """
    if mean is not None and std is not None:
        norm = Normalizer(list(mean), list(std), Normalizer.scale_for(x_train))
    elif normalize:
        norm = Normalizer.fit(x_train)
    else:
        norm = Normalizer.identity(x_train)
    norm.channel_axis = -1 if layout.rule in ("add-channel-last", "nchw-to-nhwc") else 1
    return norm
