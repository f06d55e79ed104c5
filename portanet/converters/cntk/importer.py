"""CNTK importer: CNTK 2.x ``.model`` / ``.dnn`` / ``.cmf`` files, read without CNTK.

The file is decoded with this project's CNTK v2 schema (``schema.py``, ``reader.py``), the
function graph is reconstructed with Blocks flattened (``graph.py``), and every primitive is
lowered by the op handlers in ``ops/`` into NCHW IR with a symbolic batch axis ``N``.
Cheap to import: nothing heavy is loaded until ``convert``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx_ir as ir

from portanet.converters.registry import ConvertOptions, Importer, register_importer
from portanet.errors import InvalidInputError

SUFFIXES = (".model", ".dnn", ".cmf")


@register_importer
class CntkImporter(Importer):
    name = "cntk"
    title = "CNTK 2.x"
    suffixes = SUFFIXES

    def detect(self, path: Path) -> bool:
        """By content: a CNTK v2 Dictionary, the large-file header, or a legacy v1 marker."""
        if not path.is_file():
            return False
        from portanet.converters.cntk.reader import sniff

        return sniff(path)

    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        if len(paths) != 1:
            raise InvalidInputError(f"CNTK conversion takes one model file, got {len(paths)}")
        from portanet.converters.cntk.convert import convert_file

        return convert_file(paths[0], options)
