"""The IDX file format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST), plain or gzip.

An IDX file is a 4-byte big-endian magic number — two zero bytes, a type code and the number
of dimensions — followed by one big-endian uint32 per dimension and the row-major data, stored
big-endian::

    00 00 08 03 | 00 00 27 10 | 00 00 00 1c | 00 00 00 1c | pixels ...   (10000 x 28 x 28 uint8)

A directory of the MNIST family holds four such files: training and test images (3-D) and
training and test labels (1-D), e.g. ``train-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte``.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np

from portanet.data.datasets import ArrayDataset, DataSplits, register_format
from portanet.errors import InvalidInputError

#: IDX type code -> big-endian numpy dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:  # decide by content, not by suffix
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InvalidInputError(f"{path}: cannot read IDX file ({exc})") from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (plain or gzip) into a native-endian numpy array.

    Raises ``InvalidInputError`` naming the file when the magic number, the type code or the
    length does not match what the header promises.
    """
    p = Path(path)
    data = _read_bytes(p)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise InvalidInputError(f"{p}: not an IDX file (expected magic 00 00 <type> <ndim>, received {data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise InvalidInputError(f"{p}: unknown IDX type code 0x{code:02X} (expected one of {known})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InvalidInputError(f"{p}: truncated IDX header ({len(data)} bytes, expected at least {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise InvalidInputError(
            f"{p}: IDX header promises {dims} {dtype.name} ({expected} bytes of data), "
            f"received {len(data) - header} bytes"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as IDX (gzip when ``compress`` or when the name ends in ``.gz``)."""
    p = Path(path)
    arr = np.asarray(array)
    code = next((c for c, dt in IDX_TYPES.items() if dt.newbyteorder("=") == arr.dtype.newbyteorder("=")), None)
    if code is None:
        raise InvalidInputError(f"{p}: dtype {arr.dtype} has no IDX type code")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=IDX_TYPES[code]).tobytes()
    if compress if compress is not None else p.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    p.write_bytes(payload)
    return p


# ------------------------------------------------------------------------- directories
_SPLITS = {"train": re.compile(r"train", re.I), "test": re.compile(r"t10k|test", re.I)}
_KINDS = {"images": re.compile(r"images|idx[2-9]", re.I), "labels": re.compile(r"labels|idx1", re.I)}
_EXPECTED = {
    ("train", "images"): "train-images-idx3-ubyte[.gz]",
    ("train", "labels"): "train-labels-idx1-ubyte[.gz]",
    ("test", "images"): "t10k-images-idx3-ubyte[.gz]",
    ("test", "labels"): "t10k-labels-idx1-ubyte[.gz]",
}


def _classify(name: str) -> tuple[str, str] | None:
    if "idx" not in name.lower():
        return None
    # "test" must win over "train" only when "train" is absent ("t10k" never contains "train")
    split = "train" if _SPLITS["train"].search(name) else "test" if _SPLITS["test"].search(name) else None
    kind = "labels" if _KINDS["labels"].search(name) and "images" not in name.lower() else (
        "images" if _KINDS["images"].search(name) else None)
    if split is None or kind is None:
        return None
    return split, kind


def find_idx_files(directory: str | os.PathLike[str]) -> dict[tuple[str, str], Path]:
    """Map (split, kind) -> file for the IDX files in ``directory``.

    ``split`` is ``train`` or ``test`` (``t10k`` counts as test), ``kind`` is ``images`` or
    ``labels``. Raises ``InvalidInputError`` naming the missing files, or two candidates for one slot.
    """
    d = Path(directory)
    if not d.is_dir():
        raise InvalidInputError(f"{d}: data directory does not exist")
    found: dict[tuple[str, str], Path] = {}
    for f in sorted(d.iterdir()):
        if not f.is_file():
            continue
        slot = _classify(f.name)
        if slot is None:
            continue
        if slot in found:
            # the same data plain and gzipped: prefer the uncompressed copy
            a, b = found[slot], f
            if a.name.removesuffix(".gz") == b.name.removesuffix(".gz"):
                found[slot] = a if not a.name.endswith(".gz") else b
                continue
            raise InvalidInputError(f"{d}: two {slot[0]} {slot[1]} files: {a.name} and {b.name}")
        found[slot] = f
    missing = [key for key in _EXPECTED if key not in found]
    if missing:
        want = ", ".join(f"{s} {k} ({_EXPECTED[(s, k)]})" for s, k in missing)
        have = ", ".join(sorted(f.name for f in d.iterdir())) or "nothing"
        raise InvalidInputError(f"{d}: missing IDX file(s): {want}; found: {have}")
    return found


def is_idx_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a directory holding at least one IDX-named file."""
    p = Path(path)
    return p.is_dir() and any(_classify(f.name) is not None for f in p.iterdir() if f.is_file())


def load_idx_dir(directory: str | os.PathLike[str]) -> DataSplits:
    """Load the four IDX files of an MNIST-family directory as training and test splits."""
    files = find_idx_files(directory)
    splits: dict[str, ArrayDataset] = {}
    for split in ("train", "test"):
        img_path, lab_path = files[(split, "images")], files[(split, "labels")]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if labels.ndim != 1:
            raise InvalidInputError(f"{lab_path}: labels must be 1-D, received shape {labels.shape}")
        if images.ndim < 2:
            raise InvalidInputError(f"{img_path}: images must be at least 2-D, received shape {images.shape}")
        if len(images) != len(labels):
            raise InvalidInputError(
                f"{Path(directory)}: {img_path.name} holds {len(images)} images but {lab_path.name} "
                f"holds {len(labels)} labels"
            )
        if labels.dtype.kind not in "iu":
            raise InvalidInputError(f"{lab_path}: labels must be integers, received {labels.dtype}")
        splits[split] = ArrayDataset(images, labels.astype(np.int64), str(img_path))
    return DataSplits(splits["train"], splits["test"], info={f"{s}_{k}": p.name for (s, k), p in files.items()})


register_format("idx", is_idx_dir, "a directory of MNIST-family IDX files (train-images-idx3-ubyte[.gz], ...)")(
    load_idx_dir
)
