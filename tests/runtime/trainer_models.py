"""Models for the Trainer tests, written in torch and exported with ``torch.onnx``.

The case-study CNN (input 1x28x28): Conv 16 k3 ReLU -> MaxPool 2 -> Conv 32 k4 ReLU ->
AvgPool 2 -> Dropout 0.3 -> Conv 64 k5 ReLU -> Flatten -> Dense 32 tanh -> Dropout 0.2 ->
Dense 10 -> Softmax. It is exported untrained (seeded initialisation).

``torch.onnx`` drops Dropout from a module in eval mode, so the module is exported in train
mode (Dropout nodes with ``training_mode=True``) and the ``training_mode`` input is then
removed: the file has inference semantics, like a deployed model, and keeps its Dropout
layers for training.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx

from model_zoo.common import cache_dir


def case_study_module(seed: int = 0):
    import torch
    from torch import nn

    class CaseStudyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3)
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(16, 32, 4)
            self.pool2 = nn.AvgPool2d(2)
            self.drop1 = nn.Dropout(0.3)
            self.conv3 = nn.Conv2d(32, 64, 5)
            self.fc1 = nn.Linear(64, 32)
            self.drop2 = nn.Dropout(0.2)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x):
            x = self.pool1(torch.relu(self.conv1(x)))          # (N, 16, 13, 13)
            x = self.drop1(self.pool2(torch.relu(self.conv2(x))))  # (N, 32, 5, 5)
            x = torch.relu(self.conv3(x)).flatten(1)           # (N, 64)
            x = self.drop2(torch.tanh(self.fc1(x)))            # (N, 32)
            return torch.softmax(self.fc2(x), dim=1)           # (N, 10)

    torch.manual_seed(seed)
    return CaseStudyCNN()


def small_mlp_module(seed: int = 0, hidden: int = 32):
    """A dropout-free, batchnorm-free classifier: runs are deterministic for any batch split."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10), nn.Softmax(dim=1))


def _strip_training_mode(proto: onnx.ModelProto) -> onnx.ModelProto:
    for node in proto.graph.node:
        if node.op_type == "Dropout" and len(node.input) == 3:
            del node.input[2]  # no training_mode input: inference semantics
    return proto


def export_onnx(module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Export ``module`` with ``torch.onnx`` (batch dimension symbolic), keeping Dropout nodes."""
    import torch

    from model_zoo.common import cached

    def write(tmp: Path) -> None:
        module.train()  # keep Dropout in the exported graph (see the module docstring)
        x = torch.zeros(2, *input_shape[1:])
        batch = torch.export.Dim("N", min=1)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (x,), dynamo=True, input_names=["input"], output_names=["probs"],
                                        dynamic_shapes=({0: batch},), opset_version=18, verbose=False)
        proto = _strip_training_mode(program.model_proto)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    return cached(path, write)  # parallel test workers export once


def case_study_onnx(seed: int = 0) -> Path:
    """The untrained case-study CNN as an ONNX file in the model cache."""
    return export_onnx(case_study_module(seed), cache_dir("trainer") / f"case_study_cnn_s{seed}.onnx", (1, 1, 28, 28))


def small_mlp_onnx(seed: int = 0) -> Path:
    return export_onnx(small_mlp_module(seed), cache_dir("trainer") / f"small_mlp_s{seed}.onnx", (1, 1, 28, 28))
