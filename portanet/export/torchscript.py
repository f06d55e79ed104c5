"""``--to torchscript``: the generated PyTorch module compiled with ``torch.jit.script``."""

from __future__ import annotations

from pathlib import Path

from portanet._deps import require
from portanet.errors import ConversionError
from portanet.export._files import publish, staging
from portanet.export.graph import ExportGraph
from portanet.export.pytorch import import_generated, taps_of, write_code
from portanet.export.registry import Artifact, ExportOptions, target


def generated_module(g: ExportGraph, folder: Path, options: ExportOptions):
    """(the generated module in eval mode with its weights, its code, its .py file)."""
    code, py, pt = write_code(g, folder, "net", options)
    mod = import_generated(py)
    return mod.load(str(pt)), code, py


def bisect_artifact(code, py: Path) -> Artifact:
    return Artifact("pytorch", py, [py, py.with_suffix(".pt")], "pytorch", input_names=code.input_names,
                    taps=taps_of(code))


@target("torchscript", suffix=".pt", help="TorchScript archive of the generated module (torch.jit.load)")
def export_torchscript(g: ExportGraph, path: Path, options: ExportOptions) -> Artifact:
    torch = require("torch")
    path = Path(path)
    with staging(path) as tmp:
        model, code, py = generated_module(g, tmp, options)
        try:
            scripted = torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - TorchScript's frontend raises many types
            raise ConversionError(f"torch.jit.script refused the generated module: {str(exc).splitlines()[0]}",
                                  framework="export to torchscript") from exc
        out = tmp / "out.pt"
        scripted.save(str(out))
        publish(out, path)
    return Artifact("torchscript", path, [path], "torchscript", input_names=code.input_names)
