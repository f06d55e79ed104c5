"""Caffe importer: deploy ``.prototxt`` + ``.caffemodel`` (either order), or a
``.caffemodel`` alone (its layer definitions are inside it). Cheap to import: the schema
and converter load inside ``convert``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import onnx_ir as ir

from portanet.converters.registry import ConvertOptions, Importer, register_importer

# a text prototxt begins with a Caffe NetParameter field or a comment
_PROTOTXT_HEAD = re.compile(rb"^\s*(#[^\n]*\n\s*)*(name|layers?|input|input_dim|input_shape|state|force_backward)\s*[:{]")


@register_importer
class CaffeImporter(Importer):
    name = "caffe"
    title = "Caffe"
    suffixes = (".prototxt", ".caffemodel")

    def detect(self, path: Path) -> bool:
        """By suffix, or by content for renamed files (text NetParameter / binary tags)."""
        if not path.is_file():
            return False
        suffix = path.suffix.lower()
        if suffix in self.suffixes:
            return True
        with open(path, "rb") as f:
            head = f.read(512)
        return bool(_PROTOTXT_HEAD.match(head))

    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        from portanet.converters.caffe.converter import convert_files

        return convert_files(paths, options)
