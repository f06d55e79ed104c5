"""Importer registry and format detection.

Each importer subpackage defines one ``Importer`` subclass decorated with
``@register_importer``. Importer modules must be cheap to import: heavy frameworks
(torch, tensorflow, cv2) are imported inside ``convert``.
"""

from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from portanet.errors import ConversionError, InvalidInputError, InvalidModelError
from portanet.ir import frozen

log = logging.getLogger(__name__)

# subpackages whose `importer` module registers an Importer; order = detection priority
_IMPORTER_MODULES = ("onnx", "caffe", "mxnet", "keras", "pytorch", "cntk")


@dataclass
class ConvertOptions:
    """Options every importer may read; each ignores what does not concern it."""

    #: input name -> shape (ints, or strings for symbolic dims); overrides declared shapes
    input_shapes: dict[str, list[int | str]] = field(default_factory=dict)
    #: keep the batch dimension symbolic ("N")
    dynamic_batch: bool = True
    # Caffe
    prototxt: Path | None = None
    weights: Path | None = None
    # MXNet
    params: Path | None = None
    epoch: int | None = None
    # PyTorch
    model_class: str | None = None
    trust_pickle: bool = False
    example_inputs: Any = None
    # Keras / TensorFlow
    nchw: bool = False
    #: anything else an importer understands
    extra: dict[str, Any] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("example_inputs", "extra") and v}
        out.update({k: v for k, v in self.extra.items() if isinstance(v, str | int | float | bool)})
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


class Importer(ABC):
    """One source format."""

    #: short name used by --framework (e.g. "caffe")
    name: str = ""
    #: human readable name
    title: str = ""
    #: file suffixes (lower case, with dot) that suggest this format
    suffixes: tuple[str, ...] = ()

    def detect(self, path: Path) -> bool:
        """True if ``path`` (file or directory) looks like this format, by content where possible."""
        return path.suffix.lower() in self.suffixes

    @abstractmethod
    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        """Convert the source files to the IR (canonical opset)."""

    def accepts_object(self, obj: Any) -> bool:
        """True if this importer converts the in-memory object ``obj`` (Python API)."""
        return False

    def convert_object(self, obj: Any, options: ConvertOptions) -> ir.Model:
        raise ConversionError(f"{self.name} importer cannot convert objects of type {type(obj).__name__}")


_REGISTRY: dict[str, Importer] = {}
_LOADED = False


def register_importer(cls: type[Importer]) -> type[Importer]:
    """Class decorator: instantiate and register an importer under ``cls.name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in _IMPORTER_MODULES:
        try:
            importlib.import_module(f"portanet.converters.{mod}.importer")
        except ModuleNotFoundError as exc:  # importer not written yet
            if exc.name != f"portanet.converters.{mod}.importer":
                raise
            log.debug("no importer module for %s", mod)


def importers() -> dict[str, Importer]:
    """All registered importers by name."""
    _load_all()
    return dict(_REGISTRY)


def get_importer(name: str) -> Importer:
    imps = importers()
    if name not in imps:
        raise InvalidInputError(f"unknown framework '{name}'; known: {', '.join(sorted(imps))}")
    return imps[name]


def detect(paths: Sequence[Path]) -> Importer:
    """Pick the importer for ``paths``: content/suffix detection over every path."""
    imps = importers()
    for p in paths:
        if not p.exists():
            raise InvalidInputError(f"{p}: no such file or directory")
    for imp in imps.values():
        if any(_detects(imp, p) for p in paths):
            return imp
    names = ", ".join(str(p) for p in paths)
    raise InvalidModelError(
        f"{names}: cannot tell the source format; pass --framework ({', '.join(sorted(imps))})"
    )


def _detects(imp: Importer, path: Path) -> bool:
    """``imp.detect(path)``, guarded: a file too corrupt to sniff (a zip with a broken central
    directory, an unreadable header) is simply not this importer's format."""
    try:
        return bool(imp.detect(path))
    except Exception as exc:  # noqa: BLE001 - sniffing must never fail the command
        log.debug("%s detection of %s failed: %s: %s", imp.name, path, type(exc).__name__, exc)
        return False


def convert_paths(
    paths: Sequence[str | os.PathLike[str]],
    options: ConvertOptions | None = None,
    framework: str | None = None,
) -> ir.Model:
    """Convert source files to the IR, detecting the format unless ``framework`` is given."""
    ps = [Path(p) for p in paths]
    if not ps:
        raise InvalidInputError("no source files given")
    opts = options or ConvertOptions()
    imp = get_importer(framework) if framework else detect(ps)
    for p in ps:
        if not p.exists():
            raise InvalidInputError(f"{p}: no such file or directory")
    log.info("converting %s with the %s importer", ", ".join(map(str, ps)), imp.name)
    return frozen.record(imp.convert(ps, opts))


def convert_object(obj: Any, options: ConvertOptions | None = None) -> ir.Model:
    """Convert an in-memory model object (nn.Module, keras.Model, tf.function)."""
    opts = options or ConvertOptions()
    for imp in importers().values():
        if imp.accepts_object(obj):
            return frozen.record(imp.convert_object(obj, opts))
    raise InvalidInputError(f"cannot convert an object of type {type(obj).__module__}.{type(obj).__name__}")
