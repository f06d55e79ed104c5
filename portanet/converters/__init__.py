"""Importers: one subpackage per source format, plus the detection registry."""

from portanet.converters.registry import (
    ConvertOptions,
    Importer,
    convert_object,
    convert_paths,
    detect,
    get_importer,
    importers,
    register_importer,
)

__all__ = [
    "ConvertOptions",
    "Importer",
    "convert_object",
    "convert_paths",
    "detect",
    "get_importer",
    "importers",
    "register_importer",
]
