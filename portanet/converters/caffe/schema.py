"""Caffe message classes built at import time from ``caffe.proto`` (no protoc needed).

``caffe.proto`` in this folder is written in a restricted proto2 dialect: top-level
messages and enums, enums nested in messages, scalar/enum/message fields with ``optional``,
``repeated`` or ``required``, ``[default = ...]`` and ``[packed = true]``. A small parser
turns it into a ``FileDescriptorProto`` and protobuf's ``message_factory`` makes classes.

Two variants of the schema are built:

* ``caffe`` — the faithful schema, used for text prototxt and for writing.
* ``caffe_raw`` — identical except that the packed float/double arrays of ``BlobProto``
  are declared ``bytes``. Packed repeated fields and bytes share wire type 2, so a binary
  caffemodel decodes to the raw little-endian payload, which numpy views without a copy
  per element. This keeps a ResNet-50-sized caffemodel well under a second to decode.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_FILE = Path(__file__).with_name("caffe.proto")

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _F.TYPE_DOUBLE,
    "float": _F.TYPE_FLOAT,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "int32": _F.TYPE_INT32,
    "uint32": _F.TYPE_UINT32,
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}
_LABELS = {"optional": _F.LABEL_OPTIONAL, "repeated": _F.LABEL_REPEATED, "required": _F.LABEL_REQUIRED}
#: BlobProto fields that the raw variant reads as bytes
_RAW_FIELDS = {"data", "diff", "double_data", "double_diff"}

_TOKEN = re.compile(r'"[^"]*"|[A-Za-z_][A-Za-z0-9_.]*|-?\d[\w.+-]*|-?\.\d[\w.+-]*|[{}\[\]=;,]')


def _tokens(text: str) -> list[str]:
    text = re.sub(r"//[^\n]*", "", text)
    return _TOKEN.findall(text)


class _Parser:
    """Recursive-descent parser for the dialect described in the module docstring."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str:
        return self.toks[self.i]

    def next(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise SyntaxError(f"caffe.proto: expected '{tok}', found '{got}' (token {self.i})")

    def parse(self) -> tuple[str, list[tuple[str, Any]]]:
        package = ""
        items: list[tuple[str, Any]] = []
        while self.i < len(self.toks):
            tok = self.next()
            if tok == "syntax":
                self.expect("=")
                self.next()
                self.expect(";")
            elif tok == "package":
                package = self.next()
                self.expect(";")
            elif tok == "enum":
                items.append(("enum", self.enum()))
            elif tok == "message":
                items.append(("message", self.message()))
            else:
                raise SyntaxError(f"caffe.proto: unexpected '{tok}'")
        return package, items

    def enum(self) -> tuple[str, list[tuple[str, int]]]:
        name = self.next()
        self.expect("{")
        values = []
        while self.peek() != "}":
            vname = self.next()
            self.expect("=")
            values.append((vname, int(self.next())))
            self.expect(";")
        self.next()
        return name, values

    def message(self) -> dict[str, Any]:
        name = self.next()
        self.expect("{")
        msg: dict[str, Any] = {"name": name, "enums": [], "fields": []}
        while self.peek() != "}":
            tok = self.next()
            if tok == "enum":
                msg["enums"].append(self.enum())
                continue
            label, ftype, fname = tok, self.next(), self.next()
            self.expect("=")
            number = int(self.next())
            opts: dict[str, str] = {}
            if self.peek() == "[":
                self.next()
                while True:
                    key = self.next()
                    self.expect("=")
                    opts[key] = self.next()
                    if self.next() == "]":
                        break
            self.expect(";")
            msg["fields"].append((label, ftype, fname, number, opts))
        self.next()
        return msg


def _build_file(text: str, package: str, raw: bool) -> descriptor_pb2.FileDescriptorProto:
    _, items = _Parser(text).parse()
    fdp = descriptor_pb2.FileDescriptorProto(name=f"portanet/{package}.proto", package=package, syntax="proto2")
    messages = {m["name"] for kind, m in items if kind == "message"}
    top_enums = {e[0] for kind, e in items if kind == "enum"}

    def add_enum(container: Any, enum: tuple[str, list[tuple[str, int]]]) -> None:
        ed = container.add(name=enum[0])
        for vname, number in enum[1]:
            ed.value.add(name=vname, number=number)

    for kind, item in items:
        if kind == "enum":
            add_enum(fdp.enum_type, item)
            continue
        md = fdp.message_type.add(name=item["name"])
        nested = {e[0] for e in item["enums"]}
        for enum in item["enums"]:
            add_enum(md.enum_type, enum)
        for label, ftype, fname, number, opts in item["fields"]:
            fd = md.field.add(name=fname, number=number, label=_LABELS[label])
            if raw and item["name"] == "BlobProto" and fname in _RAW_FIELDS:
                # packed payload read as one bytes value (same wire type)
                fd.label = _F.LABEL_OPTIONAL
                fd.type = _F.TYPE_BYTES
                continue
            if ftype in _SCALARS:
                fd.type = _SCALARS[ftype]
            elif ftype in nested:
                fd.type = _F.TYPE_ENUM
                fd.type_name = f".{package}.{item['name']}.{ftype}"
            elif ftype in top_enums:
                fd.type = _F.TYPE_ENUM
                fd.type_name = f".{package}.{ftype}"
            elif ftype in messages:
                fd.type = _F.TYPE_MESSAGE
                fd.type_name = f".{package}.{ftype}"
            else:
                raise SyntaxError(f"caffe.proto: unknown type '{ftype}' of {item['name']}.{fname}")
            if "default" in opts:
                value = opts["default"].strip('"')
                if fd.type in (_F.TYPE_FLOAT, _F.TYPE_DOUBLE):
                    value = repr(float(value))
                fd.default_value = value
            if opts.get("packed") == "true":
                fd.options.packed = True
    return fdp


@cache
def _classes(package: str) -> dict[str, type]:
    raw = package == "caffe_raw"
    fdp = _build_file(PROTO_FILE.read_text(encoding="utf-8"), package, raw)
    pool = descriptor_pool.DescriptorPool()
    fd = pool.AddSerializedFile(fdp.SerializeToString())
    return {name: message_factory.GetMessageClass(desc) for name, desc in fd.message_types_by_name.items()}


def messages() -> dict[str, type]:
    """The faithful schema's message classes by name (``NetParameter``, ``BlobProto``, ...)."""
    return _classes("caffe")


def raw_messages() -> dict[str, type]:
    """The raw-blob schema (``BlobProto.data`` etc. are bytes) for fast binary I/O."""
    return _classes("caffe_raw")


def NetParameter() -> Any:  # noqa: N802 - mirrors the message name
    """A new, empty ``caffe.NetParameter`` (faithful schema)."""
    return messages()["NetParameter"]()


def RawNetParameter() -> Any:  # noqa: N802
    """A new, empty ``NetParameter`` of the raw-blob schema."""
    return raw_messages()["NetParameter"]()
