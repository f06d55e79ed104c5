"""ONNX importer: any .onnx file (opset 7-21) upgraded to the canonical opset."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx_ir as ir

from portanet.converters.registry import ConvertOptions, Importer, register_importer
from portanet.errors import InvalidInputError
from portanet.ir.io import load_onnx
from portanet.ir.metadata import FRAMEWORK_KEY, set_model_metadata
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY


@register_importer
class OnnxImporter(Importer):
    name = "onnx"
    title = "ONNX"
    suffixes = (".onnx",)

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".onnx"

    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        if len(paths) != 1:
            raise InvalidInputError(f"ONNX conversion takes one .onnx file, got {len(paths)}")
        model = load_onnx(paths[0])
        apply_input_shapes(model, options.input_shapes, where=str(paths[0]))
        from portanet.converters.onnx.custom import expand_custom_nodes

        expand_custom_nodes(model, path=str(paths[0]))  # users' handlers (portanet.register_layer)
        add_self_provenance(model)
        keep = {k: v for k, v in model.metadata_props.items() if k.startswith("portanet.parity")}
        framework = model.metadata_props.get(FRAMEWORK_KEY, "onnx")
        set_model_metadata(model, framework=framework, source_files=paths, options=options.as_metadata())
        model.metadata_props.update(keep)
        return model


def add_self_provenance(model: ir.Model) -> None:
    """Nodes without provenance get their own name and op type (an ONNX source's layers are its nodes)."""
    for i, node in enumerate(model.graph.all_nodes()):
        if SOURCE_KEY not in node.metadata_props:
            if not node.name:
                node.name = f"{node.op_type}_{i}"
            node.metadata_props[SOURCE_KEY] = node.name
            node.metadata_props[SOURCE_TYPE_KEY] = node.op_type


def apply_input_shapes(model: ir.Model, shapes: dict[str, list[int | str]], *, where: str) -> None:
    """Override graph input shapes; key '' applies to a single-input model."""
    if not shapes:
        return
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer()}
    for name, dims in shapes.items():
        if name == "":
            if len(inputs) != 1:
                raise InvalidInputError(
                    f"{where}: --input-shape without a name needs a single-input model; inputs: {', '.join(inputs)}"
                )
            name = next(iter(inputs))
        if name not in inputs:
            raise InvalidInputError(f"{where}: no graph input named '{name}'; inputs: {', '.join(inputs)}")
        v = inputs[name]
        if v.shape is not None and len(v.shape) != len(dims):
            raise InvalidInputError(
                f"{where}: input '{name}' has rank {len(v.shape)}, --input-shape gives {len(dims)} dims"
            )
        v.shape = ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in dims])
