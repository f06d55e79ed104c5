"""The pipeline: levels, pass selection, the guard catching broken passes, the CLI."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import helper

from portanet.cli import cli
from portanet.errors import InvalidInputError
from portanet.optimizer import (
    PASSES,
    OptimizerCheckError,
    OptimizerPass,
    available_passes,
    optimize,
    optimize_with_report,
)
from tests.optimizer.helpers import init, make, ops, ort_run, rand, tensor_input

node = helper.make_node


def _conv_bn_model(opset: int = 18) -> onnx.ModelProto:
    return make(
        [node("Identity", ["x"], ["xi"]), node("Conv", ["xi", "w"], ["h"]),
         node("BatchNormalization", ["h", "s", "b", "m", "v"], ["r"]), node("Relu", ["r"], ["y"])],
        [tensor_input("x", ["N", 2, 5, 5])], [("y", ["N", 3, 3, 3])],
        [init("w", rand(3, 2, 3, 3)), init("s", rand(3, positive=True)), init("b", rand(3, seed=1)),
         init("m", rand(3, seed=2)), init("v", rand(3, seed=3, positive=True))],
        opset=opset,
    )


def test_levels():
    proto = _conv_bn_model()
    m0 = optimize(ir.serde.deserialize_model(proto), level=0)
    assert ops(m0) == {"Identity": 1, "Conv": 1, "BatchNormalization": 1, "Relu": 1}
    m1 = optimize(ir.serde.deserialize_model(proto), level=1, check=True)
    assert ops(m1) == {"Conv": 1, "BatchNormalization": 1, "Relu": 1}
    m2 = optimize(ir.serde.deserialize_model(proto), level=2, check=True)
    assert ops(m2) == {"Conv": 1, "Relu": 1}
    x = rand(2, 2, 5, 5)
    np.testing.assert_allclose(ort_run(m2, {"x": x})[0], ort_run(proto, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_available_passes_and_levels():
    passes = available_passes()
    assert passes["fold_batchnorm"] == 2 and passes["constant_folding"] == 1
    assert {"shape_inference", "cse", "remove_unused", "push_transposes", "gemm_input"} <= set(passes)


def test_unknown_pass_and_old_opset_are_user_errors():
    with pytest.raises(InvalidInputError, match="unknown optimizer pass"):
        optimize(ir.serde.deserialize_model(_conv_bn_model()), passes=["no_such_pass"])
    old = make([node("Relu", ["x"], ["y"])], [tensor_input("x", ["N", 2])], [("y", ["N", 2])], opset=12)
    with pytest.raises(InvalidInputError, match="opset >= 13"):
        optimize(ir.serde.deserialize_model(old))


class _SwapReluForSigmoid(OptimizerPass):
    """A deliberately wrong pass: the guard must name it."""

    name = "test_swap_relu"
    level = 0

    def run(self, graph: ir.Graph) -> bool:
        changed = False
        for n in graph:
            if n.op_type == "Relu":
                n.op_type = "Sigmoid"
                changed = True
        return changed


class _PinBatch(OptimizerPass):
    """A deliberately wrong pass: pins the symbolic batch of the output."""

    name = "test_pin_batch"
    level = 0

    def run(self, graph: ir.Graph) -> bool:
        out = graph.outputs[0]
        if isinstance(out.shape[0], int):
            return False
        out.shape = ir.Shape([2, *list(out.shape)[1:]])
        return True


class _BakeBatch(OptimizerPass):
    """A deliberately wrong pass: hard-codes the probe batch (2) into a Reshape target."""

    name = "test_bake_batch"
    level = 0

    def run(self, graph: ir.Graph) -> bool:
        for n in graph:
            if n.op_type == "Reshape" and n.inputs[1].const_value.numpy()[0] == 0:
                arr = np.array([2, -1], np.int64)
                n.inputs[1].const_value = ir.tensor(arr, name=n.inputs[1].name)
                return True
        return False


def test_guard_catches_a_baked_batch_with_a_second_batch_size(monkeypatch):
    monkeypatch.setitem(PASSES, _BakeBatch.name, _BakeBatch)
    proto = make([node("Reshape", ["x", "shape"], ["y"])], [tensor_input("x", ["N", 3, 4])], [("y", ["N", 12])],
                 [init("shape", np.array([0, 12], np.int64))])
    with pytest.raises(OptimizerCheckError, match="at batch 3"):
        optimize(ir.serde.deserialize_model(proto), passes=[_BakeBatch.name], check=True)


@pytest.mark.parametrize("cls,match", [(_SwapReluForSigmoid, "'test_swap_relu' changed output 'y'"),
                                       (_PinBatch, "'test_pin_batch' pinned the symbolic dim 'N'")])
def test_guard_names_the_pass_that_breaks_the_model(monkeypatch, cls, match):
    monkeypatch.setitem(PASSES, cls.name, cls)
    model = ir.serde.deserialize_model(_conv_bn_model())
    with pytest.raises(OptimizerCheckError, match=match):
        optimize(model, passes=[cls.name], check=True)


def test_report_records_every_changing_pass():
    result = optimize_with_report(ir.serde.deserialize_model(_conv_bn_model()), level=2, check=True)
    names = [r.name for r in result.records]
    assert "fold_batchnorm" in names and "eliminate_identity" in names
    assert all(r.max_abs_change is not None and r.max_abs_change < 1e-5 for r in result.records)
    assert result.before.nodes == 4 and result.after.nodes == 2
    assert result.after.initializer_bytes < result.before.initializer_bytes


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_optimize(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_model(), str(src))
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(cli, ["optimize", str(src), "-o", str(out), "--check"])
    assert res.exit_code == 0, res.output
    assert "BatchNormalization" in res.output and "fold_batchnorm" in res.output
    optimized = onnx.load(str(out))
    assert [n.op_type for n in optimized.graph.node] == ["Conv", "Relu"]
    assert optimized.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_cli_optimize_passes_and_level1(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_model(), str(src))
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(cli, ["optimize", str(src), "-o", str(out), "--passes", "eliminate_identity"])
    assert res.exit_code == 0, res.output
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv", "BatchNormalization", "Relu"]
    res = CliRunner().invoke(cli, ["optimize", str(src), "-o", str(out), "-O1"])
    assert res.exit_code == 0, res.output
    assert "BatchNormalization" in [n.op_type for n in onnx.load(str(out)).graph.node]


@pytest.mark.parametrize("args,message", [
    (["--passes", "nope"], "unknown optimizer pass(es) nope"),
    (["-O", "3"], "Invalid value"),
])
def test_cli_optimize_bad_arguments(tmp_path, args, message):
    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_model(), str(src))
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(cli, ["optimize", str(src), "-o", str(out), *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_cli_optimize_missing_file(tmp_path):
    res = CliRunner().invoke(cli, ["optimize", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "no such file" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_cli_convert_O2(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_conv_bn_model(), str(src))
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out), "-O2"])
    assert res.exit_code == 0, res.output
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv", "Relu"]
