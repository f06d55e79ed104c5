"""``.npz`` datasets: arrays ``x`` and ``y`` (or ``x_train``/``y_train``), optionally ``x_test``/``y_test``.

Without a test pair, ``load_data`` holds out a seeded fraction of the samples for evaluation.
Object arrays are refused (``allow_pickle=False``): a data file must never run code.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from portanet.data.datasets import ArrayDataset, DataSplits, register_format
from portanet.errors import InvalidInputError

_TRAIN_KEYS = (("x", "y"), ("x_train", "y_train"))
_TEST_KEYS = (("x_test", "y_test"), ("x_val", "y_val"))


def _pair(arrays: dict[str, np.ndarray], options: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, np.ndarray] | None:
    for xk, yk in options:
        if xk in arrays and yk in arrays:
            return arrays[xk], arrays[yk]
    return None


def load_npz(path: str | os.PathLike[str]) -> DataSplits:
    """Read an ``.npz`` file with ``x``/``y`` (and optionally ``x_test``/``y_test``) arrays."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{p}: not a readable .npz file ({exc})") from exc
    train = _pair(arrays, _TRAIN_KEYS)
    if train is None:
        raise InvalidInputError(
            f"{p}: expected arrays 'x' and 'y' (or 'x_train' and 'y_train'), received {', '.join(arrays) or 'none'}"
        )
    test = _pair(arrays, _TEST_KEYS)
    out = []
    for kind, pair in (("train", train), ("test", test)):
        if pair is None:
            out.append(ArrayDataset(train[0][:0], train[1][:0], str(p)))
            continue
        x, y = pair
        if len(x) != len(y):
            raise InvalidInputError(f"{p}: {kind} split has {len(x)} samples in x but {len(y)} targets in y")
        if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
            raise InvalidInputError(f"{p}: {kind} arrays must be numeric, received x {x.dtype}, y {y.dtype}")
        if y.ndim == 1 and y.dtype.kind in "iub":
            y = y.astype(np.int64)
        out.append(ArrayDataset(x, y, str(p)))
    if test is not None and out[0].sample_shape != out[1].sample_shape:
        raise InvalidInputError(
            f"{p}: training samples have shape {out[0].sample_shape}, test samples {out[1].sample_shape}"
        )
    return DataSplits(out[0], out[1])


register_format(
    "npz",
    lambda p: p.is_file() and p.suffix.lower() == ".npz",
    "an .npz file with arrays x and y (optionally x_test and y_test)",
)(load_npz)
