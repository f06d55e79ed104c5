"""The generated PyTorch file: readable, standalone, trainable and equal to ONNX Runtime.

Parity reference: ONNX Runtime on the converted IR, run beside the generated module in a
fresh process that does not import portanet (``portanet.export.verify``).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import portanet
from portanet.export.graph import ExportGraph
from portanet.export.pytorch import import_generated
from tests.export.conftest import case_study_caffe_files, zoo_ir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case_study_py(export_dir: Path) -> Path:
    out = export_dir / "case_study_caffe.py"
    result = portanet.export(list(map(str, case_study_caffe_files())), to="pytorch", path=out)
    assert result.check.passed and result.check.max_error < 1e-5
    return out


def test_names_the_caffe_layers(case_study_py: Path) -> None:
    text = case_study_py.read_text()
    # the layers of model_zoo/case_study_nets.CAFFE_PROTOTXT, as modules of the generated class
    for layer, ctor in [("conv1", "nn.Conv2d(1, 16, kernel_size=3)"), ("pool1", "nn.MaxPool2d"),
                        ("conv2", "nn.Conv2d(16, 32, kernel_size=4)"), ("pool2", "nn.AvgPool2d"),
                        ("drop1", "nn.Dropout(0.3)"), ("conv3", "nn.Conv2d(32, 64, kernel_size=5)"),
                        ("fc1", "nn.Linear(64, 32)"), ("fc2", "nn.Linear(32, 10)")]:
        assert re.search(rf"self\.{layer} = {re.escape(ctor)}", text), layer
    assert "class CaseStudyCNN(nn.Module):" in text
    forward = text[text.index("def forward"):text.index("def load")]
    assert "self.conv1(data)" in forward and "torch.tanh(" in forward and "torch.softmax(" in forward


def test_imports_only_torch_and_is_ruff_clean(case_study_py: Path) -> None:
    tree = ast.parse(case_study_py.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imported == {"torch"}
    ruff = Path(sys.executable).with_name("ruff")
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
                           str(case_study_py)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_loads_in_plain_python_and_matches_the_caffe_source(case_study_py: Path) -> None:
    # a fresh interpreter outside the project: only torch, the file and its .pt
    code = (
        "import importlib.util, sys, numpy as np, torch\n"
        f"spec = importlib.util.spec_from_file_location('net', {str(case_study_py)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "x = np.random.default_rng(3).random((5, 1, 28, 28), dtype=np.float32)\n"
        "y = m.load()(torch.from_numpy(x)).detach().numpy()\n"
        "assert 'portanet' not in sys.modules\n"
        f"np.save({str(case_study_py.with_suffix('.npy'))!r}, y)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=case_study_py.parent)
    got = np.load(case_study_py.with_suffix(".npy"))
    # reference: OpenCV's DNN module running the Caffe files (an independent Caffe implementation)
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (portanet[caffe-ref]) is not installed")
    prototxt, caffemodel = case_study_caffe_files()
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    x = np.random.default_rng(3).random((5, 1, 28, 28), dtype=np.float32)
    net.setInput(x)
    want = net.forward()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 + 1e-4 * np.abs(want).max())


def test_parameters_buffers_and_training(export_dir: Path) -> None:
    """Weights are nn.Parameters, BatchNorm statistics buffers; one SGD step changes the
    weights and the running statistics, and the batch stays dynamic."""
    out = export_dir / "unet.py"
    portanet.export(zoo_ir("pytorch-small_unet"), to="pytorch", path=out, verify=False)
    mod = import_generated(out)
    model = mod.load()
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert params and all(k.endswith(("weight", "bias")) for k in params)
    assert {k.rsplit(".", 1)[1] for k in buffers} == {"running_mean", "running_var", "num_batches_tracked"}
    g = ExportGraph(zoo_ir("pytorch-small_unet"))  # every trainable IR initializer is a parameter
    trainable = [v for v in g.graph.initializers.values() if g.kind(v) == "param"]
    assert sum(p.numel() for p in params.values()) == sum(v.const_value.size for v in trainable)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.detach().clone() for k, v in list(params.items())[:3]}
    mean_before = next(v for k, v in buffers.items() if k.endswith("running_mean")).clone()
    x = torch.randn(5, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 2, (5, 32, 32)))
    loss.backward()
    opt.step()
    assert all(not torch.equal(before[k], params[k].detach()) for k in before)
    assert not torch.equal(mean_before, next(v for k, v in buffers.items() if k.endswith("running_mean")))
    assert model.eval()(torch.randn(7, 3, 32, 32)).shape == (7, 2, 32, 32)


def test_resnet50_reads_at_about_two_lines_per_layer(export_dir: Path) -> None:
    from model_zoo.caffe.writer import build

    prototxt, weights = build("resnet50")
    out = export_dir / "resnet50.py"
    result = portanet.export([str(prototxt), str(weights)], to="pytorch", path=out, verify=False)
    layers = len(re.findall(r"^\s*layer\s*\{", Path(prototxt).read_text(), re.M)) - 1  # minus the Input layer
    body = out.read_text()
    init = body[body.index("def __init__"):body.index("def forward")].count("\n") - 2
    forward = body[body.index("def forward"):body.index("def load")].count("\n") - 3
    assert (init + forward) / layers <= 2.2, (init, forward, layers)
    assert result.seconds < 60  # sanity only; the 5 s target is measured in benchmarks/export.py


def test_symbolic_batch_is_not_baked(export_dir: Path) -> None:
    """Reshape/Flatten keep the batch dynamic: the generated code runs at any batch size."""
    model = zoo_ir("cntk-convnet")
    out = export_dir / "cntk_convnet.py"
    portanet.export(model, to="pytorch", path=out)  # verified at batch 1 and 3
    text = out.read_text()
    g = ExportGraph(model)
    assert isinstance(g.shape(g.inputs[0])[0], str)
    assert ".reshape(-1," in text or "torch.flatten(" in text
