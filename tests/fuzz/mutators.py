"""Structure-aware mutators for the reader fuzz tests.

Each mutator takes a seeded ``random.Random`` and the bytes (or parsed structure) of a real
model file and returns mutated bytes. Besides blind byte edits (truncation, bit flips,
inserted runs), the mutators understand the containers the readers parse:

* protobuf wire format (Caffe binary, ONNX, CNTK): fields are parsed into a tree without a
  schema; a mutation replaces one varint (a length, a dim, a dtype, an enum), one string or
  bytes value (invalid UTF-8, a dangling name, an empty name), one fixed-width number, drops
  or duplicates a field, or lies about a length; enclosing lengths are re-encoded so the edit
  reaches the reader instead of the protobuf decoder.
* JSON (MXNet symbols, Keras configs): one leaf or container is edited (huge / negative /
  zero numbers, numbers written as strings, out-of-range node references, missing keys).
* prototxt text: one number, string or line is edited.
* MXNet ``.params``: the header fields (array count, rank, dims, dtype flag, storage type,
  name lengths) are located with a small walker and overwritten with edge values.
* zip archives (``.keras``, ``.pt2``, TorchScript): one member is mutated with the mutator
  that fits its content, or the archive bytes themselves are edited.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
import zipfile
from collections.abc import Callable
from typing import Any

from portanet.ir.writer import varint as _varint

#: values that break size arithmetic: zero, one, sign bits, int32/int64 limits, beyond int64
EDGE_INTS = [0, 1, 2, 3, 7, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1]
EDGE_SIGNED = [-1, -2, -(2**31), -(2**63)]
BAD_STRINGS = [b"", b"\xff\xfe\x80", b"\xc3\x28", b"no_such_name", b"a" * 300, b"\x00", b"..", b"../../etc/passwd"]


# ------------------------------------------------------------------------------- bytes
def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One blind edit: truncate, flip bits, overwrite a run, insert or delete bytes."""
    if not data:
        return b"\x00"
    b = bytearray(data)
    kind = rng.choice(["truncate", "flip", "flip", "run", "insert", "delete", "swap"])
    if kind == "truncate":
        return bytes(b[: rng.randrange(0, len(b))])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "run":
        i = rng.randrange(len(b))
        n = rng.randint(1, 16)
        b[i : i + n] = bytes([rng.choice([0x00, 0xFF, 0x7F, 0x80])]) * n
    elif kind == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == "delete":
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 16)]
    else:
        i, j = rng.randrange(len(b)), rng.randrange(len(b))
        n = rng.randint(1, 64)
        b[i : i + n], b[j : j + n] = b[j : j + n], b[i : i + n]
    return bytes(b)


# ---------------------------------------------------------------------------- protobuf
Field = list  # [field number, wire type, value]; value: int, bytes, or list[Field] (a parsed message)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad varint")
        c = data[pos]
        pos += 1
        result |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return result, pos


def parse_pb(data: bytes, depth: int = 0) -> list[Field] | None:
    """Parse ``data`` as protobuf fields (nested messages where the bytes parse as one), or None."""
    fields: list[Field] = []
    pos = 0
    try:
        while pos < len(data):
            key, pos = _read_varint(data, pos)
            fno, wt = key >> 3, key & 7
            if fno == 0:
                return None
            if wt == 0:
                v, pos = _read_varint(data, pos)
                fields.append([fno, 0, v])
            elif wt == 1:
                if pos + 8 > len(data):
                    return None
                fields.append([fno, 1, data[pos : pos + 8]])
                pos += 8
            elif wt == 5:
                if pos + 4 > len(data):
                    return None
                fields.append([fno, 5, data[pos : pos + 4]])
                pos += 4
            elif wt == 2:
                n, pos = _read_varint(data, pos)
                if pos + n > len(data):
                    return None
                raw = data[pos : pos + n]
                pos += n
                sub = parse_pb(raw, depth + 1) if depth < 12 and n and not _looks_textual(raw) else None
                fields.append([fno, 2, sub if sub else raw])
            else:
                return None
    except ValueError:
        return None
    return fields


def _looks_textual(raw: bytes) -> bool:
    return len(raw) < 256 and all(32 <= c < 127 for c in raw)


def serialize_pb(fields: list[Field]) -> bytes:
    out = bytearray()
    for fno, wt, v in fields:
        out += _varint((fno << 3) | wt)
        if wt == 0:
            out += _varint(v)
        elif wt in (1, 5):
            out += v
        else:
            body = serialize_pb(v) if isinstance(v, list) else v
            out += _varint(len(body)) + body
    return bytes(out)


def _sites(fields: list[Field], out: list[tuple[list[Field], int]]) -> list[tuple[list[Field], int]]:
    for i, f in enumerate(fields):
        out.append((fields, i))
        if f[1] == 2 and isinstance(f[2], list):
            _sites(f[2], out)
    return out


def _edge_varint(rng: random.Random, old: int) -> int:
    choice = rng.random()
    if choice < 0.45:
        return rng.choice(EDGE_INTS)
    if choice < 0.7:
        return rng.choice(EDGE_SIGNED) & ((1 << 64) - 1)  # negative int32/int64 as protobuf writes it
    if choice < 0.85:
        return max(0, old + rng.choice([-1, 1, -2, 2]))
    return old * rng.choice([2, 16, 1000, 10**9])


def mutate_protobuf(rng: random.Random, data: bytes, *, max_tries: int = 8) -> bytes:
    """One field-level edit of a protobuf message (re-encoded), or a length lie, or a byte edit."""
    tree = parse_pb(data)
    if not tree:
        return mutate_bytes(rng, data)
    sites = _sites(tree, [])
    for _ in range(max_tries):
        parent, i = rng.choice(sites)
        fno, wt, v = parent[i]
        kind = rng.random()
        if kind < 0.1:
            del parent[i]
        elif kind < 0.17:
            parent.insert(i, [fno, wt, v])
        elif kind < 0.22:
            parent[i] = [rng.choice([fno + 1, max(1, fno - 1), rng.randint(1, 40)]), wt, v]
        elif wt == 0:
            parent[i] = [fno, 0, _edge_varint(rng, v)]
        elif wt == 5:
            parent[i] = [fno, 5, rng.choice([struct.pack("<f", x) for x in (float("nan"), float("inf"), -1e38, 0.0)]
                                             + [struct.pack("<I", x) for x in (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000)])]
        elif wt == 1:
            parent[i] = [fno, 1, rng.choice([struct.pack("<d", float("nan")), struct.pack("<q", -1),
                                             struct.pack("<Q", 2**63 - 1), struct.pack("<d", 1e308)])]
        elif isinstance(v, list):
            if rng.random() < 0.5 and v:
                # edit inside, then lie about this message's length by a few bytes
                body = serialize_pb(v)
                parent[i] = [fno, 2, body[: max(0, len(body) - rng.randint(1, 8))]]
            else:
                parent[i] = [fno, 2, serialize_pb(v) + bytes([rng.randrange(256)])]
        else:
            r = rng.random()
            if r < 0.4:
                new = rng.choice(BAD_STRINGS)
            elif r < 0.7 and v:
                new = v[: rng.randrange(len(v))]  # packed data shorter than its declared count
            elif r < 0.85 and v:
                new = v + v[: rng.randint(1, min(len(v), 7))]
            else:
                new = mutate_bytes(rng, v)
            parent[i] = [fno, 2, new]
        return serialize_pb(tree)
    return mutate_bytes(rng, data)


# -------------------------------------------------------------------------------- JSON
def _json_sites(obj: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_sites(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_sites(v, (*path, i))
    return out


def _edit_string(rng: random.Random, s: str) -> Any:
    nums = list(re.finditer(r"-?\d+", s))
    r = rng.random()
    if nums and r < 0.5:
        m = rng.choice(nums)
        new = str(rng.choice([*EDGE_INTS, *EDGE_SIGNED, 99999999999999999999]))
        return s[: m.start()] + new + s[m.end() :]
    if r < 0.6:
        return s + "x"
    if r < 0.7:
        return ""
    if r < 0.8:
        return "(" + s
    if r < 0.9:
        return rng.choice([None, 1, -1, [], {}, True])
    return "\udcff"  # lone surrogate: not encodable as UTF-8


def mutate_json_obj(rng: random.Random, obj: Any) -> Any:
    """Edit one place of a parsed JSON document in place (returns the possibly new root)."""
    sites = _json_sites(obj)
    path = rng.choice(sites)
    if not path:
        return rng.choice([[], {}, None, 0])
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    old = parent[key]
    r = rng.random()
    if r < 0.12:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return obj
    if r < 0.18 and isinstance(parent, list):
        parent.insert(key, old)
        return obj
    if isinstance(old, bool):
        new: Any = rng.choice([not old, None, 1, "true"])
    elif isinstance(old, int):
        new = rng.choice([*EDGE_INTS, *EDGE_SIGNED, 99999999999999999999, old + 1, old - 1, str(old), 1.5, None])
    elif isinstance(old, float):
        new = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e300, str(old), None])
    elif isinstance(old, str):
        new = _edit_string(rng, old)
    elif isinstance(old, list):
        new = rng.choice([[], old[:-1], old + old[-1:], [rng.choice(EDGE_INTS)] * max(1, len(old)), "x", None])
    elif isinstance(old, dict):
        new = rng.choice([{}, [], "x", None, 2**40])
    else:
        new = rng.choice([0, "x", [], {}])
    parent[key] = new
    return obj


def mutate_json(rng: random.Random, data: bytes) -> bytes:
    try:
        obj = json.loads(data)
    except ValueError:
        return mutate_bytes(rng, data)
    if rng.random() < 0.15:
        return mutate_bytes(rng, data)
    obj = mutate_json_obj(rng, obj)
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogateescape")


# -------------------------------------------------------------------------------- text
_NUM = re.compile(rb"(?<![\w.])-?\d+(\.\d+)?(e-?\d+)?(?![\w.])")
_STR = re.compile(rb'"[^"\n]*"')


def mutate_text(rng: random.Random, data: bytes) -> bytes:
    """One edit of a prototxt-like text: a number, a quoted string, a line, or the bytes."""
    r = rng.random()
    if r < 0.4:
        nums = list(_NUM.finditer(data))
        if nums:
            m = rng.choice(nums)
            new = str(rng.choice([*EDGE_INTS, *EDGE_SIGNED, 99999999999999999999, 0.5, -0.0, "1e40"])).encode()
            return data[: m.start()] + new + data[m.end() :]
    elif r < 0.65:
        strs = list(_STR.finditer(data))
        if strs:
            m = rng.choice(strs)
            new = b'"' + rng.choice([b"", b"nosuch", b"\xff\xfe", b"data", b"a\\x00", b"x" * 200]) + b'"'
            return data[: m.start()] + new + data[m.end() :]
    elif r < 0.85:
        lines = data.split(b"\n")
        i = rng.randrange(len(lines))
        if rng.random() < 0.5:
            del lines[i]
        else:
            lines.insert(i, lines[rng.randrange(len(lines))])
        return b"\n".join(lines)
    return mutate_bytes(rng, data)


# ------------------------------------------------------------------------ MXNet params
def params_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of every header field of an ``mx.nd.save`` file (V2/V3 records)."""
    out: list[tuple[int, str]] = [(16, "<Q")]  # array count
    pos = 24
    (n,) = struct.unpack_from("<Q", data, 16)
    dsize = {0: 4, 1: 8, 2: 2, 3: 1, 4: 4, 5: 1, 6: 8, 7: 1}
    for _ in range(n):
        magic = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if magic == 0xF993FACA or magic == 0xF993FAC9:
            out.append((pos, "<i"))  # storage type
            pos += 4
        out.append((pos, "<i"))  # rank
        ndim = struct.unpack_from("<i", data, pos)[0]
        pos += 4
        for _ in range(ndim):
            out.append((pos, "<q"))
            pos += 8
        pos += 8  # device
        out.append((pos, "<i"))  # dtype flag
        flag = struct.unpack_from("<i", data, pos)[0]
        pos += 4
        count = 1
        for k in range(ndim):
            count *= struct.unpack_from("<q", data, pos - 4 - 8 - 8 * (ndim - k))[0]
        pos += count * dsize[flag]
    out.append((pos, "<Q"))  # name count
    (nn,) = struct.unpack_from("<Q", data, pos)
    pos += 8
    for _ in range(nn):
        out.append((pos, "<Q"))
        (ln,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + ln
    return out


def mutate_params(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.3:
        return mutate_bytes(rng, data)
    fields = params_fields(data)
    off, fmt = rng.choice(fields)
    b = bytearray(data)
    signed = fmt in ("<i", "<q")
    bits = 32 if fmt in ("<i", "<I") else 64
    vals = [v for v in [*EDGE_INTS, *(EDGE_SIGNED if signed else [])] if v < 2 ** (bits - (1 if signed else 0))]
    vals = [v for v in vals if v >= -(2 ** (bits - 1))]
    old = struct.unpack_from(fmt, b, off)[0]
    vals += [old + 1, max(old - 1, 0 if not signed else -1), 12, 13, 99]
    struct.pack_into(fmt, b, off, rng.choice(vals))
    return bytes(b)


# ---------------------------------------------------------------------------------- zip
def mutate_zip(rng: random.Random, data: bytes, member_mutators: dict[str, Callable] | None = None) -> bytes:
    """Mutate one member of a zip archive with the mutator for its suffix, or the archive bytes."""
    if rng.random() < 0.25:
        return mutate_bytes(rng, data)
    member_mutators = member_mutators or {}
    src = zipfile.ZipFile(io.BytesIO(data))
    infos = src.infolist()
    target = rng.choice(infos)
    out = io.BytesIO()
    drop = rng.random() < 0.1
    with zipfile.ZipFile(out, "w") as dst:
        for info in infos:
            content = src.read(info.filename)
            if info.filename == target.filename:
                if drop:
                    continue
                fn = next((m for suf, m in member_mutators.items() if info.filename.endswith(suf)), mutate_bytes)
                content = fn(rng, content)
            dst.writestr(info, content)
    return out.getvalue()
