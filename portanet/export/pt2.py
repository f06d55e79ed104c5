"""``--to pt2``: a ``torch.export`` ExportedProgram of the generated module, batch dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from portanet._deps import require
from portanet.errors import ConversionError
from portanet.export._files import publish, staging
from portanet.export.graph import ExportGraph
from portanet.export.registry import Artifact, ExportOptions, target
from portanet.export.torchscript import generated_module


@target("pt2", suffix=".pt2", help="torch.export ExportedProgram (.pt2) with a dynamic batch dimension")
def export_pt2(g: ExportGraph, path: Path, options: ExportOptions) -> Artifact:
    torch = require("torch")
    path = Path(path)
    with staging(path) as tmp:
        model, code, _py = generated_module(g, tmp, options)
        examples, dynamic = [], []
        batch = torch.export.Dim("batch", min=1)
        for v in g.inputs:
            dims = g.shape(v) or []
            concrete = [2 if not isinstance(d, int) else d for d in dims]
            dtype = np.dtype(v.dtype.numpy()) if v.dtype is not None else np.dtype(np.float32)
            examples.append(torch.from_numpy(np.zeros(concrete, dtype=dtype)))
            dynamic.append({0: batch} if dims and not isinstance(dims[0], int) else None)
        try:
            ep = torch.export.export(model, tuple(examples), dynamic_shapes=tuple(dynamic))
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types
            raise ConversionError(f"torch.export refused the generated module: {str(exc).splitlines()[0]}",
                                  framework="export to pt2") from exc
        out = tmp / "out.pt2"
        torch.export.save(ep, str(out))
        publish(out, path)
    return Artifact("pt2", path, [path], "pt2", input_names=code.input_names)
