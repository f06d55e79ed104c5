"""Turning a PyTorch file into something the exporter takes: an ExportedProgram or an nn.Module.

* ``.pt2``: ``torch.export.load``.
* TorchScript archives (``torch.jit.save``): converted to an ExportedProgram by torch's
  TorchScript converter; needs ``--input-shape`` for the example input.
* ``torch.save`` files: loaded with ``weights_only=True``. A state dict needs
  ``--model-class pkg.module:Factory``; a pickled whole model needs ``--trust-pickle`` because
  unpickling runs code from the file.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from portanet._deps import require
from portanet.converters.memory import memory_cap
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError

log = logging.getLogger(__name__)

FRAMEWORK = "pytorch"


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_source(path: Path, options: ConvertOptions) -> Any:
    """Load ``path`` as an ``ExportedProgram`` or an ``nn.Module`` (in eval mode)."""
    require("torch")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"{path}: empty file")
    if path.suffix.lower() == ".pt2":
        return load_pt2(path)
    if is_torchscript(path):
        return load_torchscript(path, options)
    return load_saved(path, options)


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive, whatever its suffix (``.pt``, ``.jit``, ...): a zip with
    TorchScript's ``<name>/constants.pkl`` or ``<name>/code/`` entries."""
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in _zip_names(path))


#: torch loggers that report a broken archive with a full traceback before raising
_TORCH_LOADERS = ("torch.export", "torch._export", "torch.jit", "torch._dynamo", "torch.fx")


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Silence torch's own logs and warnings while a file loads: a broken archive is reported once,
    as portanet's one-line error, not as torch's traceback and compiler excerpts before it."""
    loggers = [logging.getLogger(n) for n in _TORCH_LOADERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def load_pt2(path: Path) -> Any:
    import torch

    if not zipfile.is_zipfile(path):
        raise InvalidModelError(f"{path}: not a torch.export .pt2 archive (not a zip file); "
                                "write one with torch.export.save(torch.export.export(model, args), path)")
    try:
        # torch warns about its own deprecated pytree classes and logs broken archives; a record
        # declaring a huge tensor fails inside torch under the memory cap
        with _quiet_torch(), memory_cap(path.stat().st_size):
            return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a broken archive
        raise InvalidModelError(f"{path}: not a readable torch.export .pt2 archive ({_first_line(exc)})") from exc


def load_torchscript(path: Path, options: ConvertOptions) -> Any:
    """A TorchScript archive as a ``ScriptModule`` in eval mode (the exporter picks the route,
    see ``torchscript.export_scripted``)."""
    import torch

    try:
        with _quiet_torch(), memory_cap(path.stat().st_size):
            script = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise InvalidModelError(f"{path}: not a readable TorchScript archive ({_first_line(exc)})") from exc
    return script.eval()


def _state_dict_of(obj: Any) -> Mapping[str, Any] | None:
    """The tensor mapping inside a torch.save result: a state dict or a checkpoint holding one."""
    import torch

    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return None


def load_saved(path: Path, options: ConvertOptions) -> Any:
    """A ``torch.save`` file: a state dict (with ``--model-class``) or a whole pickled module."""
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses anything but tensors and containers: a whole pickled model
        if not options.trust_pickle:
            raise ConversionError(
                "the file is a pickled whole model; unpickling it runs code from the file, so it is refused. "
                "Pass --trust-pickle if you trust its origin, or save model.state_dict() and convert it "
                "with --model-class pkg.module:Factory",
                framework=FRAMEWORK, path=str(path),
            ) from exc
        log.warning("%s: unpickling a whole model (--trust-pickle)", path)
        import_from_working_directory()  # the pickle names the model's classes by module
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise InvalidModelError(f"{path}: cannot unpickle the model ({_first_line(exc2)})") from exc2
    except Exception as exc:  # noqa: BLE001 - not a torch file at all
        raise InvalidModelError(f"{path}: not a PyTorch file ({_first_line(exc)})") from exc

    if isinstance(obj, torch.nn.Module):
        return obj.eval()
    state = _state_dict_of(obj)
    if state is None:
        raise InvalidModelError(
            f"{path}: expected a state dict (name -> tensor) or a whole model, received a {type(obj).__name__}"
        )
    if not options.model_class:
        raise InvalidInputError(
            f"{path}: is a state dict (weights only); pass --model-class pkg.module:Factory that builds the module"
        )
    module = build_from_factory(options.model_class, where=str(path))
    missing, unexpected = _compare_keys(module.state_dict(), state)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        raise InvalidModelError(
            f"{path}: state dict does not fit {options.model_class}: expected its {len(module.state_dict())} "
            f"keys, received {len(state)}; " + "; ".join(parts)
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches: torch lists them, keep the first
        detail = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise InvalidModelError(
            f"{path}: state dict does not fit {options.model_class}: {detail[0] if detail else _first_line(exc)}"
        ) from exc
    return module.eval()


def _compare_keys(expected: Mapping[str, Any], received: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    missing = [k for k in expected if k not in received]
    unexpected = [k for k in received if k not in expected]
    return missing, unexpected


def import_from_working_directory() -> None:
    """Let user modules import from the working directory, as ``python -m`` does (a console
    script's ``sys.path`` starts with its own folder instead)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def build_from_factory(spec: str, *, where: str) -> Any:
    """``pkg.module:Factory`` -> ``Factory()``, which must return an ``nn.Module``."""
    import torch

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise InvalidInputError(f"--model-class '{spec}': expected pkg.module:Factory")
    import_from_working_directory()
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InvalidInputError(
            f"--model-class '{spec}': cannot import {mod_name} ({_first_line(exc)}); run from the folder that "
            "contains the package, or add its folder to PYTHONPATH"
        ) from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise InvalidInputError(f"--model-class '{spec}': {mod_name} has no attribute {attr}")
    try:
        built = factory()
    except Exception as exc:  # noqa: BLE001 - user code
        raise InvalidInputError(f"--model-class '{spec}': calling {attr}() failed ({_first_line(exc)})") from exc
    if not isinstance(built, torch.nn.Module):
        raise InvalidInputError(f"--model-class '{spec}': expected {attr}() to return an nn.Module, "
                                f"received {type(built).__name__} (for {where})")
    return built
