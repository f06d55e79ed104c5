"""PyTorch reference runner: eager execution of the source module with forward hooks.

Sources are an in-memory ``nn.Module`` / ``ExportedProgram`` or the files the importer takes
(``.pt2``, TorchScript ``.pt``, ``.pth`` with ``model_class``). Intermediate outputs are the
outputs of submodules, keyed by module path (``features.3.conv``) exactly like the IR's
``portanet.source`` provenance. A module called several times (a shared ReLU) reports its
last call, which matches the last IR node carrying its name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from portanet._deps import require
from portanet.errors import InvalidInputError


def _options(options: Mapping[str, Any] | None) -> Any:
    from portanet.converters.registry import ConvertOptions

    opts = (options or {}).get("convert_options")
    if isinstance(opts, ConvertOptions):
        return opts
    return ConvertOptions(
        model_class=(options or {}).get("model_class"),
        trust_pickle=bool((options or {}).get("trust_pickle", False)),
    )


def load_module(sources: Any, options: Mapping[str, Any] | None = None) -> Any:
    """The eager module to run: a module as given, or loaded from the source files
    (an ExportedProgram is unflattened so its submodules can be hooked)."""
    torch = require("torch")
    if isinstance(sources, list | tuple) and len(sources) == 1 and not isinstance(sources[0], str | os.PathLike):
        sources = sources[0]
    if isinstance(sources, torch.nn.Module):
        return sources.eval()
    if isinstance(sources, torch.export.ExportedProgram):
        return _unflatten(sources)
    from portanet.converters.pytorch.loading import is_torchscript, load_source

    paths = [Path(p) for p in (sources if isinstance(sources, list | tuple) else [sources])]
    files = [p for p in paths
             if p.suffix.lower() in (".pt2", ".pt", ".pth", ".ckpt", ".bin") or (p.is_file() and is_torchscript(p))]
    if len(files) != 1:
        raise InvalidInputError(f"PyTorch reference needs one model file, got {', '.join(map(str, paths))}")
    obj = load_source(files[0], _options(options))
    if isinstance(obj, torch.jit.ScriptModule):
        # hookable submodules when torch's converter takes the model; the scripted module
        # itself (outputs only) when its control flow is beyond the converter
        from portanet.converters.pytorch.torchscript import to_exported

        program = to_exported(obj, _options(options), where=str(files[0]))
        return _unflatten(program) if program is not None else obj.eval()
    if isinstance(obj, torch.export.ExportedProgram):
        return _unflatten(obj)
    return obj.eval()


def _unflatten(program: Any) -> Any:
    """An ExportedProgram as a module tree (so submodules can be hooked by path)."""
    import warnings

    torch = require("torch")
    with warnings.catch_warnings():  # torch warns about its own deprecated pytree classes
        warnings.simplefilter("ignore")
        return torch.export.unflatten(program)


def _first_tensor(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, Mapping):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _flatten_outputs(out: Any) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for o in out for t in _flatten_outputs(o)]
    return []


def run_module(
    module: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run ``module`` on ``feeds`` (positional, in the feeds' order); outputs + hooked layers."""
    torch = require("torch")
    modules = dict(module.named_modules())
    captured: dict[str, Any] = {}
    handles = []

    def hook_for(name: str):
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None:
                captured[name] = t.detach().cpu().numpy().copy()

        return hook

    scripted = isinstance(module, torch.jit.ScriptModule)  # TorchScript has no forward hooks
    for name in layers or ():
        mod = modules.get(name)
        if mod is not None and name != "" and not scripted:
            handles.append(mod.register_forward_hook(hook_for(name)))
    try:
        args = [torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values()]
        with torch.no_grad():
            outs = _flatten_outputs(module(*args))
    finally:
        for h in handles:
            h.remove()
    names = list(output_names) if output_names else [f"output_{i}" for i in range(len(outs))]
    if len(names) != len(outs):
        raise InvalidInputError(f"the PyTorch module returned {len(outs)} output(s), the converted model has {len(names)}")
    result = {n: o.detach().cpu().numpy() for n, o in zip(names, outs)}
    result.update(captured)
    return result


def run_reference(
    sources: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Contract entry point (see ``portanet.parity.runners``). ``options`` may hold
    ``output_names`` (the IR's outputs, in order), ``convert_options`` or ``model_class``/``trust_pickle``.
    Layers that are not submodules (ops traced in the root's forward) are left out."""
    module = load_module(sources, options)
    return run_module(module, feeds, layers=layers, output_names=(options or {}).get("output_names"))


def prepare(sources: Any, options: Mapping[str, Any] | None = None) -> Any:
    """Load the source once; ``run_reference`` then takes the returned module as ``sources``."""
    return load_module(sources, options)
