"""Shared helpers for parity tests: corrupting one layer of a converted model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from portanet.ir.provenance import source_of


def corrupt_layer(model: ir.Model, layer: str, *, scale: float = 1.5, shift: float = 0.05) -> str:
    """Scale and shift the largest float initializer consumed by ``layer``'s nodes, in place;
    returns the initializer's name. Tests damage the ONNX this way to check bisection."""
    candidates = []
    for node in model.graph:
        src = source_of(node)
        if src is None or src[0] != layer:
            continue
        for v in node.inputs:
            if v is not None and v.const_value is not None and v.dtype is not None and v.dtype.is_floating_point():
                candidates.append(v)
    if not candidates:
        raise AssertionError(f"no weights found for layer {layer}")
    v = max(candidates, key=lambda c: c.const_value.size)
    arr = v.const_value.numpy().astype(np.float32) * scale + shift
    v.const_value = ir.tensor(arr, name=v.name)
    return v.name or ""


@pytest.fixture
def corrupt():
    return corrupt_layer


@pytest.fixture(scope="session")
def parity_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parity")
