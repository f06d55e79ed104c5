"""Loading ONNX's backend test cases (node generators + shipped pytorch-* models)."""

from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
from onnx import numpy_helper

#: the ops issue 7 requires (item 2); conformance covers cases built only from these
TARGET_OPS = frozenset(
    """Conv ConvTranspose Gemm MatMul BatchNormalization InstanceNormalization LayerNormalization LRN
    MaxPool AveragePool GlobalAveragePool GlobalMaxPool Relu LeakyRelu PRelu Elu Selu Sigmoid
    HardSigmoid HardSwish Tanh Softplus Softsign Gelu Erf Clip Softmax LogSoftmax Add Sub Mul Div
    Pow Sqrt Exp Log Abs Neg Reciprocal Max Min Sum Mean ReduceMean ReduceSum ReduceMax ReduceMin
    ReduceL2 Concat Split Slice Gather Reshape Flatten Transpose Squeeze Unsqueeze Expand Tile Pad
    Resize Upsample Identity Dropout Cast Shape Constant ConstantOfShape Where Equal Less Greater
    ArgMax Einsum""".split()
)


@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]


def _op_types(model: onnx.ModelProto) -> set[str]:
    """Op types of the model's graph and of every subgraph (If/Loop/Scan bodies) in it."""
    types: set[str] = set()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for n in g.node:
            types.add(n.op_type)
            for a in n.attribute:
                graphs.extend([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
    return types


@lru_cache(maxsize=1)
def node_cases(ops: frozenset[str] = TARGET_OPS) -> dict[str, Case]:
    """Every node test case onnx's generators produce whose ops are all in TARGET_OPS."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    out: dict[str, Case] = {}
    for c in cases:
        if c.model is None or not c.data_sets or not _op_types(c.model) <= ops:
            continue
        ins, outs = c.data_sets[0]
        out[c.name] = Case(c.name, c.model, [_arr(a) for a in ins], [_arr(a) for a in outs])
    return out


def _arr(a):
    # some generators store TensorProtos (types numpy lacks), others numpy arrays
    return numpy_helper.to_array(a) if isinstance(a, onnx.TensorProto) else a


def _data_root() -> str:
    import onnx.backend.test

    return os.path.join(os.path.dirname(onnx.backend.test.__file__), "data")


def _read_pb(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def model_dirs(kind: str) -> list[str]:
    """Test directories shipped under onnx/backend/test/data/<kind>/ (pytorch-converted, ...)."""
    return sorted(glob.glob(os.path.join(_data_root(), kind, "test_*")))


def load_model_case(path: str) -> Case:
    model = onnx.load(os.path.join(path, "model.onnx"))
    data = os.path.join(path, "test_data_set_0")
    ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(data, "input_*.pb")))]
    outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(data, "output_*.pb")))]
    return Case(os.path.basename(path), model, ins, outs)
