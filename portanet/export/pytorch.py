"""``--to pytorch``: a readable ``nn.Module`` file (``net.py``) and its state dict (``net.pt``)."""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from portanet._deps import require
from portanet.errors import InvalidInputError
from portanet.export._files import publish, staging
from portanet.export.graph import ExportGraph, identifier
from portanet.export.registry import Artifact, ExportOptions, target
from portanet.export.torch_code.writer import TorchCode, generate

log = logging.getLogger(__name__)


#: graph names exporters give every model (not worth a class name)
_GENERIC_NAMES = {None, "", "main_graph", "torch_jit", "torch-jit-export", "graph", "tf2onnx"}


def class_name(g: ExportGraph, path: Path, options: ExportOptions) -> str:
    """The generated class: ``--class-name``, else the model's name, else the file's, CamelCased."""
    graph_name = g.graph.name if g.graph.name not in _GENERIC_NAMES else None
    base = options.class_name or graph_name or path.stem
    words = [w for w in re.split(r"[^0-9A-Za-z]+", base) if w]
    name = "".join(w[0].upper() + w[1:] for w in words) or "Net"
    return identifier(name)


def write_code(g: ExportGraph, folder: Path, stem: str, options: ExportOptions) -> tuple[TorchCode, Path, Path]:
    """Generate ``<stem>.py`` and ``<stem>.pt`` in ``folder``."""
    torch = require("torch")
    code = generate(g, class_name(g, folder / f"{stem}.py", options))
    py, pt = folder / f"{stem}.py", folder / f"{stem}.pt"
    py.write_text(code.source)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in code.state_dict.items()}, pt)
    return code, py, pt


def import_generated(py: Path) -> ModuleType:
    """Import a generated module file under a private name (for torchscript / pt2)."""
    name = f"_portanet_generated_{abs(hash(str(py)))}"
    spec = importlib.util.spec_from_file_location(name, py)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(name, None)
    return mod


def taps_of(code: TorchCode) -> list[dict[str, Any]]:
    return [{"key": line, "var": var, "value": value} for line, (var, value) in sorted(code.taps.items())]


@target("pytorch", suffix=".py", help="readable nn.Module source (.py) + state dict (.pt)")
def export_pytorch(g: ExportGraph, path: Path, options: ExportOptions) -> Artifact:
    path = Path(path)
    if path.suffix != ".py":
        raise InvalidInputError(f"{path}: the PyTorch export is Python source; name it <something>.py")
    with staging(path) as tmp:
        code, py, pt = write_code(g, tmp, path.stem, options)
        final_pt = path.with_suffix(".pt")
        publish(pt, final_pt)
        publish(py, path)
    log.info("wrote %s and %s (%d parameters/buffers)", path, final_pt, len(code.state_dict))
    return Artifact("pytorch", path, [path, final_pt], "pytorch", input_names=code.input_names, taps=taps_of(code))
