"""Reading Caffe files: text prototxt, binary caffemodel, and BlobProto -> numpy.

Errors a user can cause (empty file, syntax error, truncated binary) become one-line
``InvalidModelError``s naming the file (and, for text, the line and column).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from portanet.converters.caffe import schema
from portanet.errors import InvalidInputError, InvalidModelError

log = logging.getLogger(__name__)

# forks (and OpenCV) spell PoolingParameter field 13 as `bool ceil_mode` with the opposite
# meaning of BVLC's `round_mode` enum; rewrite it by name before parsing
_CEIL_MODE = re.compile(r"\bceil_mode\s*:\s*(true|false|1|0)\b", re.IGNORECASE)
#: first bytes of text prototxt: field names or comments, never binary tags
_TEXT_START = re.compile(rb"^\s*(#|[A-Za-z_][A-Za-z0-9_]*\s*[:{])")


def _ceil_to_round(match: re.Match[str]) -> str:
    ceil = match.group(1).lower() in ("true", "1")
    return "round_mode: CEIL" if ceil else "round_mode: FLOOR"


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidInputError(f"{path}: is a directory, expected a {what}")
    data = path.read_bytes()
    if not data or (len(data) < 65536 and not data.strip()):
        raise InvalidModelError(f"{path}: empty file, expected a {what}")
    return data


def looks_like_text(data: bytes) -> bool:
    """True if ``data`` starts like a text prototxt rather than a binary caffemodel."""
    head = data[:4096].removeprefix(b"\xef\xbb\xbf")  # editors on Windows add a UTF-8 BOM
    if b"\x00" in head:
        return False
    return bool(_TEXT_START.match(head))


def parse_prototxt_text(text: str, *, where: str = "<prototxt>") -> Any:
    """Parse prototxt ``text`` into a ``caffe.NetParameter`` (faithful schema).

    Unknown fields from forks are skipped; syntax errors name the line and column.
    """
    text = _CEIL_MODE.sub(_ceil_to_round, text)
    net = schema.NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        # the message starts with "line:col : "; keep only the explanation
        detail = re.sub(r"^\d+:\d+\s*:\s*", "", str(exc))
        loc = f"{where}:{line}:{col}" if line is not None else where
        raise InvalidModelError(f"{loc}: prototxt syntax error at line {line}, column {col}: {detail}") from exc
    return net


def read_prototxt(path: Path) -> Any:
    """Read a text ``.prototxt`` into a ``caffe.NetParameter``."""
    data = _read_bytes(path, "Caffe prototxt")
    if not looks_like_text(data):
        raise InvalidModelError(f"{path}: not a text prototxt (binary content; is it a .caffemodel?)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidModelError(f"{path}: not a text prototxt (not UTF-8 at byte {exc.start})") from exc
    return parse_prototxt_text(text, where=str(path))


def read_caffemodel(path: Path) -> Any:
    """Read a binary ``.caffemodel`` into a raw-blob ``NetParameter`` (see ``schema``)."""
    data = _read_bytes(path, "Caffe .caffemodel")
    if looks_like_text(data):
        raise InvalidModelError(f"{path}: not a binary caffemodel (text content; is it a .prototxt?)")
    net = schema.RawNetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(
            f"{path}: truncated or corrupt caffemodel ({len(data):,} bytes could not be decoded as a "
            f"Caffe NetParameter: {exc})"
        ) from exc
    if not net.layer and not net.layers and not net.ListFields():
        raise InvalidModelError(f"{path}: not a caffemodel (no layers decoded from {len(data):,} bytes)")
    if not net.layer and not net.layers:
        # Caffe loads it too: a net without learned parameters (pooling, reshapes) has nothing to store
        log.info("%s holds no layers: the net has no weights to load", path)
    return net


def strip_blobs(raw_net: Any) -> Any:
    """The layer definitions of a raw caffemodel as a faithful ``NetParameter`` without weights."""
    copy = schema.RawNetParameter()
    copy.CopyFrom(raw_net)
    for layer in copy.layer:
        layer.ClearField("blobs")
    for layer in copy.layers:
        layer.ClearField("blobs")
    net = schema.NetParameter()
    net.ParseFromString(copy.SerializeToString())
    return net


def blob_shape(blob: Any) -> tuple[int, ...]:
    """A BlobProto's shape: the legacy (num, channels, height, width) if any is set."""
    legacy = ("num", "channels", "height", "width")
    if any(blob.HasField(f) for f in legacy):
        return tuple(int(getattr(blob, f)) for f in legacy)
    return tuple(int(d) for d in blob.shape.dim)


def blob_array(blob: Any, *, where: str = "") -> np.ndarray:
    """A raw-schema BlobProto as a float32 array of its declared shape."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise InvalidModelError(f"{where}blob declares negative dims {list(shape)}")
    count = math.prod(shape)  # exact: a corrupt shape must not wrap around int64
    if math.prod(d for d in shape if d) >= 2**60:
        raise InvalidModelError(f"{where}blob declares shape {list(shape)}, larger than any array can be")
    if blob.data or blob.double_data:
        # packed repeated float/double: the byte length must be a whole number of values
        raw, size, kind = (blob.data, 4, "float") if blob.data else (blob.double_data, 8, "double")
        if len(raw) % size:
            raise InvalidModelError(
                f"{where}blob holds {len(raw)} bytes of packed {kind} data, not a multiple of {size} (corrupt file)"
            )
        if len(raw) // size != count:
            raise InvalidModelError(
                f"{where}blob declares shape {list(shape)} ({count} values) but holds {len(raw) // size} values"
            )
        arr = np.frombuffer(raw, dtype="<f4" if size == 4 else "<f8").astype(np.float32, copy=False)
    else:
        # not packed (written by a non-Caffe tool): decode through the faithful schema
        full = schema.messages()["BlobProto"].FromString(blob.SerializeToString())
        if len(full.data):
            arr = np.asarray(full.data, dtype=np.float32)
        elif len(full.double_data):
            arr = np.asarray(full.double_data, dtype=np.float64).astype(np.float32)
        else:
            arr = np.zeros(0, dtype=np.float32)
    if arr.size != count:
        raise InvalidModelError(
            f"{where}blob declares shape {list(shape)} ({count} values) but holds {arr.size} values"
        )
    return arr.reshape(shape).astype(np.float32, copy=False)
