"""Models from each importer run, train and export again through the torch backend.

References: ONNX Runtime on the converted model (before training) and on the exported
model (after training: it must equal the trained torch module in eval mode).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

import portanet
from portanet.ir.io import save_onnx
from portanet.runtime import Session
from portanet.runtime.torch_backend import lower, write_back


def _caffe(name: str) -> ir.Model:
    from model_zoo.caffe.writer import build

    prototxt, weights = build(name)
    return portanet.convert(str(prototxt), str(weights))


def _pytorch(name: str) -> ir.Model:
    from model_zoo.pytorch.models import ZOO, build

    module = build(name).eval()
    return portanet.convert(module, example_inputs=(torch.randn(2, *ZOO[name].input_shape),))


def _keras(name: str) -> ir.Model:
    from model_zoo.keras.models import build

    return portanet.convert(build(name))


def _cntk(name: str) -> ir.Model:
    from model_zoo.cntk.nets import build

    return portanet.convert(str(build(name).path))


SOURCES = {
    "caffe-lenet": lambda: _caffe("lenet"),
    "caffe-squeezenet": lambda: _caffe("squeezenet"),
    "pytorch-case_study_cnn": lambda: _pytorch("case_study_cnn"),
    "keras-case_study_cnn": lambda: _keras("case_study_cnn"),
    "cntk-convnet": lambda: _cntk("convnet"),
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_converted_model_trains_and_exports(source: str, tmp_path: Path) -> None:
    model = SOURCES[source]()
    ref = Session(model, backend="ort")
    feeds = ref.random_feeds(batch=2, seed=0)
    got = Session(model, backend="torch").run(feeds)
    for name, want in ref.run(feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-5, err_msg=f"{source}: {name}")

    module = lower(model)
    x = [torch.from_numpy(feeds[n]) for n in module.input_names]
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    module.train()
    for _ in range(2):
        opt.zero_grad()
        out = module(*x)
        out = out if isinstance(out, tuple) else (out,)
        sum((o.float() ** 2).mean() for o in out).backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        out = module(*x)
    out = out if isinstance(out, tuple) else (out,)
    path = save_onnx(write_back(module, model), tmp_path / "trained.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for want, got_ort in zip(out, sess.run(None, {n: feeds[n] for n in module.input_names})):
        np.testing.assert_allclose(got_ort, want.numpy(), rtol=1e-4, atol=1e-5, err_msg=source)
