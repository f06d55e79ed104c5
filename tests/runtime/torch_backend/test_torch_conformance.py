"""ONNX's own backend test cases run on the torch backend.

Sources: every node test case that ``onnx.backend.test.case.node`` generates whose ops the
torch backend lowers (the wheel ships the generators, not the node data files), and the
``pytorch-converted`` / ``pytorch-operator`` models shipped under ``onnx/backend/test/data``.
Expected outputs are ONNX's (numpy reference implementations or PyTorch), never portanet's.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import pytest

from portanet.runtime.torch_backend import TorchBackend, supported_ops
from tests.runtime.torch_backend._onnx_cases import TARGET_OPS, load_model_case, model_dirs, node_cases

#: (regex on the case name, reason). Every entry must still match a collected case.
EXCLUDE: list[tuple[str, str]] = [
    (r"^test_cast(like)?_(no_saturate_)?(FLOAT|FLOAT16)_to_(FLOAT4|INT4|UINT4|INT2|UINT2)",
     "4-bit/2-bit target types: torch has no such tensor types"),
    (r"^test_cast(like)?_(FLOAT4|INT4|UINT4|INT2|UINT2)\w*_to_", "4-bit/2-bit source types: torch has no such tensor types"),
    (r"^test_cast(like)?_e8m0_", "float8 e8m0 (with its round_mode attribute) is not a torch backend type"),
    (r"_string(_broadcast)?$|_to_STRING|STRING_to_", "string tensors do not exist in torch"),
    (r"^test_training_dropout(_default)?(_mask)?$",
     "random dropout masks: numpy's generator (the reference) cannot be reproduced by torch"),
    (r"^test_identity_(sequence|opt)$", "sequence/optional types are not tensors; not supported by the backend"),
    (r"^test_averagepool_2d_ceil_last_window_starts_on_pad$",
     "the generator's expected values are hand-rounded to 4 decimals (0.2841 vs exact 0.28404)"),
    (r"^test_roialign_aligned_(true|false)$",
     "the generator's expected values are written to 4 decimals (checked at that precision in "
     "test_torch_detection_ops)"),
    (r"^test_attention_\w+_(fp16|bf16)_expanded$",
     "fp16/bf16 attention: summation order in reduced precision differs from numpy's beyond 1 ulp"),
]


def _excluded(name: str) -> str | None:
    for pattern, reason in EXCLUDE:
        if re.search(pattern, name):
            return reason
    return None


_NODE = node_cases(frozenset(supported_ops()))
_MODELS = {c.name: c for kind in ("pytorch-converted", "pytorch-operator") for c in map(load_model_case, model_dirs(kind))}
_ALL = {**_NODE, **_MODELS}


def _params():
    for name in sorted(_ALL):
        reason = _excluded(name)
        marks = [pytest.mark.skip(reason=f"excluded: {reason}")] if reason else []
        yield pytest.param(name, marks=marks, id=name)


def _compare(name: str, got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape, f"{name}: shape {got.shape} != expected {want.shape}"
    if want.dtype.name.startswith("float8"):
        # bit-exact rounding into the 8-bit type (NaN == NaN)
        np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    elif want.dtype.name in ("bfloat16", "float16"):
        # computed in that type: agreement to one unit in the last place of the type
        eps = 2.0**-7 if want.dtype.name == "bfloat16" else float(np.finfo(np.float16).eps)
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=eps, atol=eps)
    elif want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", _params())
def test_conformance(name: str) -> None:
    case = _ALL[name]
    backend = TorchBackend(ir.serde.deserialize_model(case.model))
    feeds = dict(zip(backend.module.input_names, case.inputs))
    outputs = list(backend.run(feeds).values())
    assert len(outputs) == len(case.outputs)
    for got, want in zip(outputs, case.outputs):
        _compare(name, got, want)


def test_exclude_list_is_current() -> None:
    """No stale entries: each exclusion still names at least one collected case."""
    for pattern, _ in EXCLUDE:
        assert any(re.search(pattern, n) for n in _ALL), f"exclude entry {pattern!r} matches no case"


def test_target_ops_have_cases() -> None:
    """Every op issue 7 requires is lowered and exercised by at least one passing node case."""
    assert TARGET_OPS <= set(supported_ops())
    covered = {op for name, c in _NODE.items() if not _excluded(name) for op in {n.op_type for n in c.model.graph.node}}
    assert not TARGET_OPS - covered, sorted(TARGET_OPS - covered)
