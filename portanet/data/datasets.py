"""In-memory datasets and the registry of on-disk dataset formats.

A dataset here is a pair of numpy arrays, samples ``x`` (N, ...) and targets ``y`` (N, ...),
small enough to hold in memory (the MNIST family, CIFAR-sized ``.npz`` files). Formats register
a ``detect`` and a ``load`` with ``@register_format``; ``load_data(path)`` picks the first
format whose ``detect`` accepts the path and returns the training and test splits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portanet.errors import InvalidInputError

#: the embedded default dataset: 8,000 training and 2,000 test digits of MNIST (IDX, gzip)
DEFAULT_DATA = Path(__file__).resolve().parent / "mnist-10k"


def default_data_dir() -> Path:
    """The embedded MNIST subset shipped with portanet (``portanet/data/mnist-10k``)."""
    return DEFAULT_DATA


@dataclass
class ArrayDataset:
    """Samples ``x`` (N, ...) and targets ``y`` (N,) class indices or (N, ...) regression targets."""

    x: np.ndarray
    y: np.ndarray
    #: where the data came from, used in error messages ("mnist/train-images-idx3-ubyte.gz")
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise InvalidInputError(
                f"{self.source or 'dataset'}: {len(self.x)} samples but {len(self.y)} targets"
            )

    def __len__(self) -> int:
        return len(self.x)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_classification(self) -> bool:
        """Integer targets of one value per sample are class labels."""
        return self.y.ndim == 1 and self.y.dtype.kind in "iub"

    def subset(self, indices: np.ndarray | slice) -> ArrayDataset:
        return ArrayDataset(self.x[indices], self.y[indices], self.source)


@dataclass
class DataSplits:
    """The training split and the split evaluated each epoch."""

    train: ArrayDataset
    test: ArrayDataset
    #: the path the splits were loaded from and the format that read it
    path: str = ""
    format: str = ""
    info: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class DataFormat:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], DataSplits]
    description: str = ""


_FORMATS: dict[str, DataFormat] = {}


def register_format(name: str, detect: Callable[[Path], bool], description: str = ""):
    """Decorator: register ``load(path) -> DataSplits`` as dataset format ``name``."""

    def deco(load: Callable[[Path], DataSplits]) -> Callable[[Path], DataSplits]:
        _FORMATS[name] = DataFormat(name, detect, load, description)
        return load

    return deco


def formats() -> dict[str, DataFormat]:
    """Registered dataset formats by name (in detection order)."""
    return dict(_FORMATS)


def load_data(
    path: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DataSplits:
    """Load a dataset: an IDX directory of the MNIST family or an ``.npz`` file with ``x``/``y``.

    ``path=None`` loads the embedded MNIST subset. Sources without a test split (an ``.npz``
    with only ``x``/``y``) hold out ``val_fraction`` of the samples, chosen with ``seed``.
    """
    p = Path(path) if path is not None else DEFAULT_DATA
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file or directory")
    if format is not None:
        if format not in _FORMATS:
            raise InvalidInputError(f"unknown data format '{format}'; known: {', '.join(_FORMATS)}")
        fmt = _FORMATS[format]
    else:
        fmt = next((f for f in _FORMATS.values() if f.detect(p)), None)
        if fmt is None:
            kinds = "; ".join(f"{f.name}: {f.description}" for f in _FORMATS.values())
            raise InvalidInputError(f"{p}: not a dataset portanet can read ({kinds})")
    splits = fmt.load(p)
    splits.path, splits.format = str(p), fmt.name
    if len(splits.test) == 0:
        splits = holdout(splits, val_fraction, seed)
    if len(splits.train) == 0:
        raise InvalidInputError(f"{p}: the training split is empty")
    return splits


def holdout(splits: DataSplits, fraction: float, seed: int = 0) -> DataSplits:
    """Move a seeded random ``fraction`` of the training samples into the test split."""
    if not 0.0 < fraction < 1.0:
        raise InvalidInputError(f"{splits.path}: no test split and validation fraction {fraction} is not in (0, 1)")
    n = len(splits.train)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise InvalidInputError(f"{splits.path}: {n} sample(s) are too few to hold out a validation split")
    order = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    return DataSplits(
        splits.train.subset(train), splits.train.subset(val), splits.path, splits.format,
        {**splits.info, "holdout_fraction": fraction},
    )


def batches(
    dataset: ArrayDataset, batch_size: int, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x, y)`` numpy batches; with ``shuffle`` the order is a seeded permutation."""
    if batch_size <= 0:
        raise InvalidInputError(f"batch size must be positive, received {batch_size}")
    n = len(dataset)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield dataset.x[idx], dataset.y[idx]
