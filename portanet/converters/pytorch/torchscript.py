"""TorchScript (``torch.jit.script`` / ``torch.jit.trace`` modules, ``torch.jit.save`` archives).

Two routes, tried in order:

1. torch's TorchScript -> ExportedProgram converter, then the dynamo exporter like any
   ``nn.Module`` (module-path provenance, constant folding);
2. for scripted modules the converter cannot take (data-dependent ``if`` and loops in
   TorchScript code: ``prim::If`` / ``prim::Loop``), torch's TorchScript-based ONNX exporter
   (``torch.onnx.export(..., dynamo=False)``), which keeps that control flow as ONNX
   ``If`` / ``Loop`` with subgraphs.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from portanet.converters.pytorch.exporter import (
    FRAMEWORK,
    _quiet,
    _summary,
    _trace_args,
    dynamic_axes,
    example_inputs_for,
    export_to_ir,
    finish_model,
)
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY

log = logging.getLogger(__name__)

#: opset the TorchScript exporter writes (then upgraded to the canonical opset)
_LEGACY_OPSET = 17


def to_exported(script: Any, options: ConvertOptions, *, where: str) -> Any | None:
    """The ExportedProgram torch's converter makes of ``script``, or None when it cannot."""
    args = example_inputs_for(None, options, where=where)
    try:
        from torch._export.converter import TS2EPConverter

        with _quiet():
            return TS2EPConverter(script, args).convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        log.info("%s: torch's TorchScript converter cannot take this model (%s); using the TorchScript exporter",
                 where, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return None


def input_names(script: Any) -> list[str]:
    """The names of ``forward``'s tensor arguments (from the TorchScript schema)."""
    try:
        return [a.name for a in script.forward.schema.arguments[1:]]
    except (AttributeError, RuntimeError):
        return []


def export_scripted(script: Any, options: ConvertOptions, *, source_files: Sequence[Any] = (),
                    where: str = "module") -> ir.Model:
    """A TorchScript module -> IR (converter route first, TorchScript exporter otherwise)."""
    program = to_exported(script, options, where=where)
    if program is not None:
        return export_to_ir(program, options, source_files=source_files, where=where)
    return export_legacy(script, options, source_files=source_files, where=where)


def export_legacy(script: Any, options: ConvertOptions, *, source_files: Sequence[Any] = (),
                  where: str = "module") -> ir.Model:
    """``torch.onnx.export(dynamo=False)``: control flow becomes ONNX If / Loop."""
    import onnx
    import torch

    example = example_inputs_for(script, options, where=where)
    axes = dynamic_axes(script, example, options)
    args = _trace_args(example, axes)
    names = input_names(script)[: len(args)]
    if len(names) != len(args):
        names = [f"input_{i}" for i in range(len(args))]
    buf = io.BytesIO()
    script.eval()
    try:
        with _quiet():
            torch.onnx.export(
                script, args, buf, dynamo=False, opset_version=_LEGACY_OPSET, input_names=names,
                dynamic_axes={n: dict(ax) for n, ax in zip(names, axes) if ax}, do_constant_folding=True,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises its own hierarchy
        raise ConversionError(f"torch.onnx TorchScript export failed: {_summary(exc)}", framework=FRAMEWORK,
                              path=where) from exc
    model = ir.serde.deserialize_model(onnx.load_from_string(buf.getvalue()))
    _scope_provenance(model, script)
    return finish_model(model, options, source_files=source_files, where=where, pin_shapes=False)


def _scope_provenance(model: ir.Model, script: Any) -> None:
    """The TorchScript exporter names nodes after their module scope (``/rnn/LSTM``,
    ``/layers.0/fc/Gemm``): the scope is the node's source module path, the scripted
    submodule's class its type; nodes of the root's own code keep their name and op type."""
    classes = {name: getattr(m, "original_name", type(m).__name__) for name, m in script.named_modules()}
    for i, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
        parts = [p for p in node.name.split("/") if p][:-1]
        path = ".".join(parts)
        path = re.sub(r"\.+", ".", path)
        if path in classes and path:
            src = (path, classes[path])
        else:
            src = (node.name, node.op_type)
        node.metadata_props[SOURCE_KEY], node.metadata_props[SOURCE_TYPE_KEY] = src
