"""Export targets: a name, a default file suffix and a writer, registered with ``@target``.

A writer receives the prepared graph, the destination and the options, writes every file
of the export atomically (nothing is left behind when it fails) and returns an
``Artifact`` that tells the verifier how to run the result in a fresh process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portanet.errors import InvalidInputError


@dataclass
class ExportOptions:
    """Options a target may read; each ignores what does not concern it."""

    #: Keras / SavedModel / TFLite: keep the IR's (NCHW) layout at the model's interface
    keep_layout: bool = False
    #: TFLite: None (float32) or "dynamic" (dynamic-range int8 weights)
    quantize: str | None = None
    #: PyTorch: the generated class name (default: from the model's name)
    class_name: str | None = None


@dataclass
class Artifact:
    """What an export wrote and how to run it (see ``portanet.export.verify``)."""

    target: str
    path: Path
    files: list[Path]
    #: runner kind for the fresh-process check
    runner: str
    #: per graph input / output: the permutation from the IR layout to the export's
    #: (``export = ir.transpose(perm)``), None when identical
    input_perms: list[list[int] | None] = field(default_factory=list)
    output_perms: list[list[int] | None] = field(default_factory=list)
    #: names the exported model gives its inputs (in IR order)
    input_names: list[str] = field(default_factory=list)
    #: intermediate values the runner can return: {"key": ..., "value": IR value name, "perm": ...}
    taps: list[dict[str, Any]] = field(default_factory=list)
    #: another artifact (written to a scratch folder) to bisect with when this one diverges
    bisect_with: Artifact | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Writer = Callable[..., Artifact]


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str
    help: str
    write: Writer
    #: looser check for lossy targets: |got - ref| <= rtol * max|ref| (+ atol)
    atol: float = 1e-5
    rtol: float = 1e-4


_TARGETS: dict[str, Target] = {}


def target(name: str, *, suffix: str, help: str, atol: float = 1e-5, rtol: float = 1e-4) -> Callable[[Writer], Writer]:
    """Decorator: register ``fn(graph, path, options) -> Artifact`` as export target ``name``."""

    def deco(fn: Writer) -> Writer:
        _TARGETS[name] = Target(name, suffix, help, fn, atol, rtol)
        return fn

    return deco


_MODULES = ("pytorch", "torchscript", "pt2", "keras", "savedmodel", "tflite")


def targets() -> dict[str, Target]:
    """Every export target by name (modules are imported on first use)."""
    import importlib

    for mod in _MODULES:
        try:
            importlib.import_module(f"portanet.export.{mod}")
        except ModuleNotFoundError as exc:  # a target not written yet
            if exc.name != f"portanet.export.{mod}":
                raise
    return dict(_TARGETS)


def get_target(name: str) -> Target:
    found = targets()
    if name not in found:
        raise InvalidInputError(f"unknown export target '{name}'; choose one of {', '.join(found)}")
    return found[name]
