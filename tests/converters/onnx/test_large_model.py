"""A real > 2 GB model (beyond protobuf's limit): saved with external data (through an opset
conversion), loaded lazily, run by ONNX Runtime and saved again."""

from __future__ import annotations

import shutil

import numpy as np
import onnx

from portanet.ir import BATCH, GraphBuilder, load_onnx, model_opset, save_onnx
from portanet.runtime import Session

ROWS, COLS = 540_000, 1024  # 2.21 GB of float32


def test_model_over_2gb_round_trip(tmp_path):
    table = np.zeros((ROWS, COLS), np.float32)
    table[:, 0] = np.arange(ROWS)  # row i starts with i: the reference for Gather is the index itself
    b = GraphBuilder("test")
    idx = b.add_input("idx", [BATCH], np.int64)
    with b.layer("emb", "Embedding"):
        y = b.op("Gather", [b.initializer("table", table), idx], {"axis": 0})
    b.add_output(y, "y")
    model = b.build(infer=False)
    del table
    try:
        out = save_onnx(model, tmp_path / "big.onnx", opset=17)
        del model
        data = tmp_path / "big.onnx.data"
        assert data.stat().st_size == ROWS * COLS * 4
        assert out.stat().st_size < 10_000  # the graph alone; the weights are external
        assert model_opset(onnx.load(str(out), load_external_data=False)) == 17
        loaded = load_onnx(out)  # upgraded to 18, tensors stay lazy references
        got = Session(loaded).run({"idx": np.array([5, ROWS - 1], np.int64)})["y"]
        np.testing.assert_array_equal(got[:, 0], [5, ROWS - 1])
        assert not got[:, 1:].any()
        again = save_onnx(loaded, tmp_path / "sub.onnx")
        assert (tmp_path / "sub.onnx.data").stat().st_size == ROWS * COLS * 4
        assert again.is_file()
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 4.4 GB: do not leave it to pytest's retention
