"""Reader for MXNet ``-symbol.json`` graphs (every version from 0.8 to 1.9).

* node attributes are merged from ``param`` (0.8), ``attr`` (0.9-0.11) and ``attrs`` (1.0+)
  in that order; hidden keys (``ctx_group``, ``lr_mult`` ...) and ``__dunder__`` variable
  annotations are dropped, except ``__shape__`` on variables, which is kept apart;
* input entries are ``[node, output]`` or ``[node, output, version]``; ``version`` is ignored;
* ``node_row_ptr`` and ``arg_nodes`` are not needed and not trusted;
* a BatchNorm written before 0.9 has no moving-stat inputs: variables
  ``<name>_moving_mean`` / ``<name>_moving_var`` are appended for it, as MXNet does on load.

Attribute values are strings; the ``Attrs`` helpers parse ``"(3, 3)"``, ``"[]"``, ``"True"``,
``"None"`` and friends, with the op's default when a key is absent.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portanet.errors import ConversionError, InvalidModelError

#: attribute keys MXNet treats as user attributes, not op parameters
HIDDEN_KEYS = {"ctx_group", "lr_mult", "wd_mult", "force_mirroring", "mirror_stage", "profiler_scope"}

_MISSING = object()


class Attrs(dict):
    """An op's string attributes with typed getters that apply defaults."""

    def _raw(self, key: str) -> str | None:
        v = self.get(key)
        if v is None:
            return None
        v = str(v).strip()
        return v

    def str(self, key: str, default: str | None = None) -> str | None:
        v = self._raw(key)
        if v is None or v == "None":
            return default
        return v.strip("'\"")

    def int(self, key: str, default: Any = _MISSING) -> Any:
        v = self._raw(key)
        if v is None or v in ("None", ""):
            if default is _MISSING:
                raise ConversionError(f"attribute '{key}' is required but absent")
            return default
        try:
            out = int(float(v)) if re.fullmatch(r"-?\d+(\.0*)?", v) else int(v)
        except (ValueError, OverflowError) as exc:
            raise ConversionError(f"attribute '{key}' must be an integer, received '{v}'") from exc
        return _int64(out, key, v)

    def float(self, key: str, default: Any = _MISSING) -> Any:
        v = self._raw(key)
        if v is None or v in ("None", ""):
            if default is _MISSING:
                raise ConversionError(f"attribute '{key}' is required but absent")
            return default
        try:
            return float(v)
        except ValueError as exc:
            raise ConversionError(f"attribute '{key}' must be a number, received '{v}'") from exc

    def bool(self, key: str, default: bool = False) -> bool:
        v = self._raw(key)
        if v is None or v in ("None", ""):
            return default
        low = v.lower()
        if low in ("true", "1"):
            return True
        if low in ("false", "0"):
            return False
        raise ConversionError(f"attribute '{key}' must be True/False/1/0, received '{v}'")

    def tuple(self, key: str, default: Any = _MISSING) -> Any:
        """'(3, 3)' / '[3,3]' / '3' -> (3, 3); empty or absent -> default. 'None' items stay None."""
        v = self._raw(key)
        if v is None or v in ("None", "", "()", "[]", "(,)"):
            if default is _MISSING:
                raise ConversionError(f"attribute '{key}' is required but absent")
            return default
        return parse_tuple(v, key)


#: MXNet parses integer parameters into (at most) 64-bit integers and rejects larger values
_INT64 = 2**63


def _int64(value: int, key: str, text: str) -> int:
    if not -_INT64 <= value < _INT64:
        raise ConversionError(f"attribute '{key}' is out of the 64-bit integer range: '{text}'")
    return value


def parse_tuple(text: str, key: str = "value") -> tuple[Any, ...]:
    body = text.strip().strip("()[]")
    out: list[Any] = []
    for part in body.split(","):
        part = part.strip().rstrip("L")
        if not part:
            continue
        if part == "None":
            out.append(None)
            continue
        try:
            out.append(_int64(int(part), key, text))
        except ValueError:
            try:
                out.append(float(part))
            except ValueError as exc:
                raise ConversionError(f"attribute '{key}' must be a tuple of numbers, received '{text}'") from exc
    return tuple(out)


@dataclass
class MxNode:
    """One node of the symbol graph."""

    index: int
    op: str
    name: str
    attrs: Attrs
    #: (producer node index, output index)
    inputs: list[tuple[int, int]] = field(default_factory=list)
    #: a variable's declared ``__shape__`` (0 = unknown dim), if any
    shape: tuple[int, ...] | None = None

    @property
    def is_variable(self) -> bool:
        return self.op == "null"


@dataclass
class MxSymbol:
    """A parsed symbol graph: nodes in topological order and the output entries."""

    nodes: list[MxNode]
    heads: list[tuple[int, int]]
    #: major*10000 + minor*100 + patch, or None for files of 0.8 and earlier
    version: int | None
    path: str

    def op_nodes(self) -> list[MxNode]:
        return [n for n in self.nodes if not n.is_variable]

    def consumers(self) -> dict[int, list[tuple[MxNode, int]]]:
        """Variable/op index -> [(consumer node, input position)]."""
        out: dict[int, list[tuple[MxNode, int]]] = {}
        for n in self.nodes:
            for pos, (src, _idx) in enumerate(n.inputs):
                out.setdefault(src, []).append((n, pos))
        return out


def _entry(raw: Any, where: str) -> tuple[int, int]:
    if not isinstance(raw, list | tuple) or len(raw) not in (2, 3) or not all(isinstance(x, int) for x in raw):
        raise InvalidModelError(f"{where}: expected an entry [node, output(, version)], received {raw!r}")
    return int(raw[0]), int(raw[1])


def parse_symbol(text: str | bytes, path: str = "<symbol>") -> MxSymbol:
    """Parse the JSON text of a ``-symbol.json`` file."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path}: not an MXNet symbol file: invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise InvalidModelError(f"{path}: not an MXNet symbol file: expected a JSON object with a 'nodes' list")
    raw_nodes = doc["nodes"]
    if not raw_nodes:
        raise InvalidModelError(f"{path}: MXNet symbol file has no nodes")
    nodes: list[MxNode] = []
    for i, rn in enumerate(raw_nodes):
        if not isinstance(rn, dict) or "op" not in rn or "name" not in rn:
            raise InvalidModelError(f"{path}: node {i} is not an object with 'op' and 'name'")
        name = str(rn["name"])
        attrs = Attrs()
        shape = None
        for key in ("param", "attr", "attrs"):
            block = rn.get(key) or {}
            if not isinstance(block, dict):
                raise InvalidModelError(f"{path}: node '{name}': '{key}' must be an object")
            for k, v in block.items():
                if k == "__shape__":
                    try:
                        shape = tuple(int(d) for d in parse_tuple(str(v), k) if d is not None)
                    except ConversionError:
                        shape = None
                if k in HIDDEN_KEYS or (k.startswith("__") and k.endswith("__")):
                    continue
                attrs[k] = str(v)
        inputs = []
        for raw in rn.get("inputs") or []:
            src, idx = _entry(raw, f"{path}: node '{name}'")
            if not 0 <= src < len(raw_nodes):
                raise InvalidModelError(
                    f"{path}: node '{name}' ({rn['op']}) references input node {src}, which does not exist "
                    f"(the file has {len(raw_nodes)} nodes)"
                )
            if src >= i:
                raise InvalidModelError(
                    f"{path}: node '{name}' ({rn['op']}) references node {src} before it is defined "
                    "(nodes must be in topological order)"
                )
            inputs.append((src, idx))
        op = str(rn["op"])
        nodes.append(MxNode(i, op, name, attrs, inputs, shape if op == "null" else None))
    _add_missing_batchnorm_aux(nodes)
    heads_raw = doc.get("heads")
    if heads_raw:
        heads = [_entry(h, f"{path}: heads") for h in heads_raw]
    else:
        heads = [(len(raw_nodes) - 1, 0)]
    for src, _idx in heads:
        if not 0 <= src < len(raw_nodes):
            raise InvalidModelError(f"{path}: graph output references node {src}, which does not exist")
    version = None
    top_attrs = doc.get("attrs")
    ver = top_attrs.get("mxnet_version") if isinstance(top_attrs, dict) else None
    if isinstance(ver, list) and len(ver) == 2:
        try:
            version = int(ver[1])
        except (TypeError, ValueError):
            version = None
    return MxSymbol(nodes, heads, version, path)


def _add_missing_batchnorm_aux(nodes: list[MxNode]) -> None:
    """Pre-0.9 BatchNorm nodes list only (data, gamma, beta): append the moving-stat
    variables MXNet synthesises on load. New variables go at the end of the node list;
    node indices of existing nodes do not change."""
    for node in list(nodes):
        if node.op == "BatchNorm" and len(node.inputs) == 3:
            for suffix in ("moving_mean", "moving_var"):
                var = MxNode(len(nodes), "null", f"{node.name}_{suffix}", Attrs())
                nodes.append(var)
                node.inputs.append((var.index, 0))


def load_symbol(path: str | os.PathLike[str]) -> MxSymbol:
    """Read and parse a ``-symbol.json`` file."""
    p = Path(path)
    if not p.is_file():
        raise InvalidModelError(f"{p}: no such symbol file")
    return parse_symbol(p.read_bytes(), str(p))
