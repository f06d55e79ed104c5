"""Data-parallel training with 2 worker processes (gloo on CPU).

With the same global batch, DistributedDataParallel over two workers must follow the same
trajectory as one process: each global batch is split between the workers and their
gradients are averaged. The reference is a single-process run of the same configuration;
the tolerance is the project's float32 default (gradient averaging across workers sums in a
different order than one mean over the whole batch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx_ir as ir
import pytest
import torch

import portanet
from portanet.data import load_data
from portanet.runtime.trainer import TrainConfig, Trainer
from tests.runtime.trainer_models import small_mlp_onnx

RTOL, ATOL = 1e-4, 1e-5
ARGS = ["--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--seed", "1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = load_data()
    data = tmp_path_factory.mktemp("ddp") / "mnist-512.npz"
    np.savez(data, x=s.train.x[:512], y=s.train.y[:512], x_test=s.test.x[:128], y_test=s.test.y[:128])
    model = small_mlp_onnx(seed=0)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(portanet.convert(str(model)), TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=1))
        trainer.fit(data)
        single = _weights(trainer.export())
    finally:
        torch.set_num_threads(saved)
    return model, data, single


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    return {k: np.array(v.const_value.numpy()) for k, v in model.graph.initializers.items()
            if v.const_value is not None and v.dtype == ir.DataType.FLOAT}


def _run(cmd: list[str], cwd) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _check(out, single) -> None:
    got = _weights(portanet.load(out))
    initial = _weights(portanet.load(small_mlp_onnx(seed=0)))
    for name, want in single.items():
        assert not np.array_equal(want, initial[name])  # training moved the weights
        np.testing.assert_allclose(got[name], want, rtol=RTOL, atol=ATOL, err_msg=name)
    log = json.loads(out.with_suffix(".train.json").read_text())
    assert log["world_size"] == 2 and len(log["history"]) == 2


def test_portanet_train_nproc_2_matches_single_process(setup, tmp_path):
    model, data, single = setup
    out = tmp_path / "ddp.onnx"
    _run([sys.executable, "-m", "portanet.cli", "train", str(model), "--data", str(data), "-o", str(out),
          "--nproc", "2", *ARGS], tmp_path)
    _check(out, single)
    # rank 0 alone wrote the checkpoints
    assert sorted(p.name for p in (tmp_path / "ddp.checkpoints").iterdir()) == ["epoch-001.pt", "epoch-002.pt"]


def test_under_torchrun(setup, tmp_path):
    model, data, single = setup
    out = tmp_path / "torchrun.onnx"
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
          "-m", "portanet.cli", "train", str(model), "--data", str(data), "-o", str(out), *ARGS], tmp_path)
    _check(out, single)
