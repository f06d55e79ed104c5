"""Thin helpers over onnx_ir: builder, provenance, shapes, metadata, ONNX file I/O."""

from portanet.ir.builder import (
    BATCH,
    CANONICAL_OPSET,
    IR_VERSION,
    GraphBuilder,
    ir_dtype,
    make_shape,
    new_model,
)
from portanet.ir.io import atomic_write_bytes, load_onnx, model_opset, save_onnx
from portanet.ir.metadata import CERTIFICATE_KEY, get_json, read_metadata, set_json, set_model_metadata
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY, nodes_by_source, source_of
from portanet.ir.shapes import dims_of, infer_shapes, parse_input_shapes, parse_shape

__all__ = [
    "BATCH",
    "CANONICAL_OPSET",
    "CERTIFICATE_KEY",
    "IR_VERSION",
    "SOURCE_KEY",
    "SOURCE_TYPE_KEY",
    "GraphBuilder",
    "atomic_write_bytes",
    "dims_of",
    "get_json",
    "infer_shapes",
    "ir_dtype",
    "load_onnx",
    "make_shape",
    "model_opset",
    "new_model",
    "nodes_by_source",
    "parse_input_shapes",
    "parse_shape",
    "read_metadata",
    "save_onnx",
    "set_json",
    "set_model_metadata",
    "source_of",
]
