"""Shape helpers: parsing user shape strings and running ONNX shape inference on the IR."""

from __future__ import annotations

import logging
import re

import onnx_ir as ir

from portanet.errors import InvalidInputError

_DIM = re.compile(r"^(\d+|[A-Za-z_][A-Za-z0-9_]*)$")


def parse_shape(text: str) -> list[int | str]:
    """'1x3x224x224' -> [1, 3, 224, 224]; symbolic dims stay strings ('Nx3x32x32')."""
    text = text.strip()
    if not text:
        raise InvalidInputError("empty shape")
    dims: list[int | str] = []
    for part in re.split(r"[x,×]", text):
        part = part.strip()
        if not _DIM.match(part):
            raise InvalidInputError(f"bad shape '{text}': dimension '{part}' is not an integer or a name")
        dims.append(int(part) if part.isdigit() else part)
    return dims


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, list[int | str]]:
    """['data=1x3x224x224', ...] -> {'data': [1, 3, 224, 224]}; a bare shape is keyed ''."""
    out: dict[str, list[int | str]] = {}
    for spec in specs:
        name, sep, shape = spec.rpartition("=")
        if not sep:
            name, shape = "", spec
        out[name] = parse_shape(shape)
    return out


def dims_of(value: ir.Value) -> list[int | str | None] | None:
    """The value's shape as Python dims (int, symbolic name or None), or None if unknown."""
    if value.shape is None:
        return None
    out: list[int | str | None] = []
    for d in value.shape:
        if isinstance(d, int):
            out.append(d)
        else:
            out.append(d.value if getattr(d, "value", None) is not None else None)
    return out


def infer_shapes(model: ir.Model, *, strict: bool = False) -> ir.Model:
    """Annotate every value of ``model`` in place with ONNX shape inference; returns ``model``.

    Large initializers are held aside while onnx runs (onnx_ir's pass serializes the graph
    without their data), so a ResNet-50-sized model is not copied through protobuf.
    Inference failures leave the model as it was unless ``strict``.
    """
    from onnx_ir.passes.common.shape_inference import ShapeInferencePass

    if strict:
        try:
            ShapeInferencePass(check_type=True, strict_mode=True, data_prop=True)(model)
        except Exception as exc:  # onnx raises several internal exception types
            raise InvalidInputError(f"shape inference failed: {exc}") from exc
        return model
    logging.getLogger("onnx_ir.passes.common.shape_inference").setLevel(logging.ERROR)
    ShapeInferencePass(check_type=True, strict_mode=False, data_prop=True)(model)
    return model
