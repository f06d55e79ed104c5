"""PyTorch importer: ``nn.Module`` (Python API), ``.pt2`` ExportedProgram, TorchScript ``.pt``
and state dicts (``.pth`` + ``--model-class``), through torch's dynamo ONNX exporter.

This module stays cheap to import: torch is imported inside the functions it calls.
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from portanet.converters.registry import ConvertOptions, Importer, register_importer
from portanet.errors import InvalidInputError

#: suffixes of files torch writes: export archives, TorchScript, torch.save pickles
SUFFIXES = (".pt2", ".pt", ".pth", ".ckpt", ".bin")


@register_importer
class PyTorchImporter(Importer):
    name = "pytorch"
    title = "PyTorch"
    suffixes = SUFFIXES

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix.lower() not in SUFFIXES:
            # TorchScript archives come with any suffix (.jit, .torchscript, ...): by content
            from portanet.converters.pytorch.loading import is_torchscript

            return zipfile.is_zipfile(path) and is_torchscript(path)
        # every modern torch file (.pt2, TorchScript, torch.save) is a zip archive; old
        # torch.save files are raw pickles, which the loader handles with its own message
        return path.suffix.lower() != ".bin" or zipfile.is_zipfile(path)

    def accepts_object(self, obj: Any) -> bool:
        torch = sys.modules.get("torch")
        if torch is None:  # an object cannot be a torch module unless torch is imported
            return False
        return isinstance(obj, torch.nn.Module | torch.export.ExportedProgram)

    def convert_object(self, obj: Any, options: ConvertOptions) -> ir.Model:
        from portanet.converters.pytorch.exporter import export_to_ir

        return export_to_ir(obj, options, source_files=(), where=type(obj).__name__)

    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        from portanet.converters.pytorch.exporter import export_to_ir
        from portanet.converters.pytorch.loading import is_torchscript, load_source

        files = [p for p in paths if p.suffix.lower() in SUFFIXES or (p.is_file() and is_torchscript(p))]
        if len(files) != 1:
            raise InvalidInputError(
                f"PyTorch conversion takes one model file (.pt2, .pt, .pth), got {', '.join(map(str, paths))}"
            )
        obj = load_source(files[0], options)
        return export_to_ir(obj, options, source_files=files, where=str(files[0]))
