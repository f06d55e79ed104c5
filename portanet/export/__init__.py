"""``portanet export``: the IR back into a framework, verified.

    import portanet
    result = portanet.export("deploy.prototxt", to="pytorch", path="net.py")   # + net.pt
    result = portanet.export(model_ir, to="keras", path="model.keras")
    result.check.max_error                                                      # vs ONNX Runtime

Targets (one module each, registered in ``registry``): ``pytorch`` (readable nn.Module
source + state dict), ``torchscript``, ``pt2``, ``keras`` (Keras 3 functional model of
standard layers, channels-last), ``savedmodel`` and ``tflite`` (from the Keras export).
Every export is checked by default in a fresh process that does not import portanet
(``portanet.export.verify``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from portanet.export.registry import Artifact, ExportOptions, get_target, targets

log = logging.getLogger(__name__)

__all__ = ["Artifact", "ExportOptions", "ExportResult", "export", "get_target", "prepare", "targets"]


@dataclass
class ExportResult:
    """What ``export`` wrote, how long it took and (when verified) its parity check."""

    artifact: Artifact
    seconds: float
    check: Any = None  # portanet.export.verify.ExportCheck


def prepare(model: Any, *, opt_level: int = 1, **convert_options: Any) -> ir.Model:
    """An IR model from anything ``portanet.convert`` takes (paths, an nn.Module, a keras
    Model) or an IR model itself, cleaned up at ``opt_level`` (1 keeps it trainable)."""
    import portanet

    if isinstance(model, ir.Model):
        ir_model = model
    elif isinstance(model, str | os.PathLike | list | tuple):
        ir_model = portanet.convert(*(model if isinstance(model, list | tuple) else [model]), **convert_options)
    else:
        ir_model = portanet.convert(model, **convert_options)
    if opt_level > 0:
        ir_model = portanet.optimize(ir_model, level=opt_level)
    return ir_model


def export(
    model: Any,
    *,
    to: str,
    path: str | os.PathLike[str],
    verify: bool = True,
    seed: int = 0,
    keep_layout: bool = False,
    quantize: str | None = None,
    class_name: str | None = None,
    opt_level: int = 1,
    threads: int = 1,
    **convert_options: Any,
) -> ExportResult:
    """Export ``model`` to framework ``to`` at ``path``.

    ``model``: an IR model, source path(s), or an in-memory framework model. With ``verify``
    the export runs in a fresh process beside ONNX Runtime on seeded inputs (batch 1 and 3);
    a mismatch raises ParityError naming the first divergent source layer. Unsupported ops
    raise one UnsupportedOpError listing all of them, before anything is written.
    """
    from portanet.export.graph import ExportGraph
    from portanet.export.verify import check_export, raise_on_failure

    tgt = get_target(to)
    options = ExportOptions(keep_layout=keep_layout, quantize=quantize, class_name=class_name)
    ir_model = prepare(model, opt_level=opt_level, **convert_options)
    start = time.perf_counter()
    g = ExportGraph(ir_model)
    artifact = tgt.write(g, Path(path), options)
    result = ExportResult(artifact, time.perf_counter() - start)
    log.info("exported to %s in %.2f s", to, result.seconds)
    if verify:
        rtol, atol = tgt.rtol, tgt.atol
        if quantize:
            rtol, atol = 0.1, 0.0  # dynamic-range int8 weights: a coarse check, not float parity
        result.check = check_export(g, artifact, atol=atol, rtol=rtol, seed=seed, threads=threads)
        raise_on_failure(result.check, Path(path))
    return result


class _CallableModule(types.ModuleType):
    """``portanet.export`` is both this package and the API function: importing the package
    replaces the function attribute of ``portanet`` with the module, so the module calls
    ``export``."""

    def __call__(self, model: Any, *, to: str, path: str | os.PathLike[str], **kwargs: Any) -> ExportResult:
        return export(model, to=to, path=path, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
