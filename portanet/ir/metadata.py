"""Model-level metadata: source framework, source file hashes, version, options, certificate."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx_ir as ir

FRAMEWORK_KEY = "portanet.source_framework"
FILES_KEY = "portanet.source_files"
VERSION_KEY = "portanet.version"
OPTIONS_KEY = "portanet.options"
CERTIFICATE_KEY = "portanet.parity"
#: on an integer graph input used as indices (e.g. token ids into an embedding table): the
#: exclusive upper bound of valid values, so that generated inputs stay valid
INDEX_BOUND_KEY = "portanet.index_bound"


def mark_index_bound(value: ir.Value, bound: int) -> None:
    """Record that integer input ``value`` indexes a table of ``bound`` rows (the smallest bound wins)."""
    old = index_bound(value)
    value.metadata_props[INDEX_BOUND_KEY] = str(bound if old is None else min(old, bound))


def index_bound(value: ir.Value) -> int | None:
    """The exclusive upper bound recorded by ``mark_index_bound`` (None if none)."""
    raw = value.metadata_props.get(INDEX_BOUND_KEY)
    return int(raw) if raw is not None else None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_sources(paths: Sequence[Any]) -> list[dict[str, str]]:
    """[{"file": basename, "sha256": ...}] for every existing regular file (directories are
    hashed file by file, in sorted order)."""
    out: list[dict[str, str]] = []
    for p in paths:
        if isinstance(p, str | os.PathLike) and os.path.isfile(p):
            out.append({"file": os.path.basename(os.fspath(p)), "sha256": sha256_file(p)})
        elif isinstance(p, str | os.PathLike) and os.path.isdir(p):
            for root, _dirs, files in sorted(os.walk(p)):
                for fn in sorted(files):
                    fp = os.path.join(root, fn)
                    rel = os.path.relpath(fp, os.path.dirname(os.fspath(p)))
                    out.append({"file": rel, "sha256": sha256_file(fp)})
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def set_model_metadata(
    model: ir.Model,
    *,
    framework: str,
    source_files: Sequence[Any] = (),
    options: Mapping[str, Any] | None = None,
    extra: Mapping[str, str] | None = None,
) -> None:
    from portanet import __version__

    props = model.metadata_props
    props[FRAMEWORK_KEY] = framework
    props[FILES_KEY] = json.dumps(describe_sources(source_files))
    props[VERSION_KEY] = __version__
    props[OPTIONS_KEY] = json.dumps(_jsonable(dict(options or {})), sort_keys=True)
    for k, v in (extra or {}).items():
        props[k] = v


def get_json(model: ir.Model, key: str) -> Any:
    raw = model.metadata_props.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def set_json(model: ir.Model, key: str, value: Any) -> None:
    model.metadata_props[key] = json.dumps(_jsonable(value), sort_keys=True)


def read_metadata(model: ir.Model) -> dict[str, Any]:
    """All portanet metadata, JSON-decoded, plus any other metadata_props verbatim."""
    out: dict[str, Any] = {}
    for k, v in model.metadata_props.items():
        try:
            out[k] = json.loads(v) if k.startswith("portanet.") and k != VERSION_KEY and k != FRAMEWORK_KEY else v
        except json.JSONDecodeError:
            out[k] = v
    return out
