"""The compatibility matrix's rows: every zoo model of every importer, and the ONNX
importer's own test models, each a function that converts it to IR as ``portanet convert``
does (import, then the default -O1 optimization).

``large`` models (over ~1 GFLOP or 5 M parameters at their zoo size) are too slow for the
ONNX reference evaluator; every other consumer runs them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Source:
    #: importer name (caffe, mxnet, keras, pytorch, cntk, onnx)
    importer: str
    name: str
    convert: Callable[[], Any]  # () -> ir.Model, before optimization
    large: bool = False
    #: inputs must be positive (log / sqrt cases)
    positive: bool = False

    @property
    def id(self) -> str:
        return f"{self.importer}-{self.name}"


def _options(**kw: Any) -> Any:
    from portanet.converters.registry import ConvertOptions

    return ConvertOptions(**kw)


# ------------------------------------------------------------------------------------ caffe
def _caffe(name: str) -> Callable[[], Any]:
    def convert() -> Any:
        from model_zoo.caffe.writer import build
        from portanet.converters.registry import convert_paths

        shapes = {"data": ["N", 1, 28, 28]} if name == "lenet_train_test" else {}
        return convert_paths(list(build(name)), _options(input_shapes=shapes))

    return convert


# ------------------------------------------------------------------------------------ pytorch
def _pytorch(name: str) -> Callable[[], Any]:
    def convert() -> Any:
        import torch

        from model_zoo.pytorch.models import ZOO, build
        from portanet.converters.registry import convert_object

        x = torch.randn(2, *ZOO[name].input_shape)
        return convert_object(build(name), _options(example_inputs=(x,)))

    return convert


# ------------------------------------------------------------------------------------ keras
def _keras(name: str) -> Callable[[], Any]:
    def convert() -> Any:
        from model_zoo.keras.models import save_model
        from portanet.converters.registry import convert_paths

        return convert_paths([save_model(name)])

    return convert


# ------------------------------------------------------------------------------------ mxnet
def _mxnet(name: str, size: int) -> Callable[[], Any]:
    def convert() -> Any:
        from model_zoo import mxnet as mxzoo
        from portanet.converters.mxnet.importer import convert_checkpoint

        folder = mxzoo.build(("zoo",))
        # MXNet symbols carry no input shape: the zoo's size, as --input-shape data=Nx3xSxS
        shapes = {"data": ["N", 3, size, size]}
        return convert_checkpoint(folder / f"{name}-symbol.json", folder / f"{name}-0000.params",
                                  _options(input_shapes=shapes))

    return convert


# ------------------------------------------------------------------------------------ cntk
def _cntk(name: str) -> Callable[[], Any]:
    def convert() -> Any:
        from model_zoo.cntk.nets import build
        from portanet.converters.registry import convert_paths

        return convert_paths([build(name).path])

    return convert


# ------------------------------------------------------------------------------------ onnx
def _onnx_file(make: Callable[[Path], None], name: str) -> Callable[[], Any]:
    def convert() -> Any:
        from model_zoo.common import cache_dir, cached
        from portanet.converters.registry import convert_paths

        return convert_paths([cached(cache_dir("onnx") / f"{name}.onnx", make)])

    return convert


def _torch_export(path: Path) -> None:
    """torch.onnx's dynamo export of a small CNN with a dynamic batch (as in the ONNX importer tests)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AvgPool2d(3, stride=2, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Hardswish(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4), torch.nn.LayerNorm(4),
    ).eval()
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(path), dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))


def _tf2onnx_export(path: Path) -> None:
    """tf2onnx of a tf.function (conv + reduce mean), as in the ONNX importer tests."""
    import tensorflow as tf
    import tf2onnx

    kernel = np.random.default_rng(0).standard_normal((3, 3, 3, 4)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="img")])
    def f(img):
        k = tf.constant(kernel)
        y = tf.nn.relu(tf.nn.conv2d(img, k, strides=1, padding="SAME"))
        return tf.reduce_mean(y, axis=[1, 2])

    tf2onnx.convert.from_function(f, input_signature=f.input_signature, opset=15, output_path=str(path))


def _opset_changes(path: Path) -> None:
    """The ONNX importer's opset-conversion test model (ops whose schemas changed in 13-21)."""
    import onnx

    from tests.converters.onnx.test_io import model_v18

    onnx.save(model_v18(), str(path))


# ------------------------------------------------------------------------------------ catalog
def _catalog() -> list[Source]:
    from model_zoo.caffe.writer import ZOO as CAFFE_ZOO
    from model_zoo.cntk.nets import all_names as cntk_names
    from model_zoo.keras.models import BUILDERS as KERAS_ZOO
    from model_zoo.pytorch.models import ZOO as TORCH_ZOO

    positive_cntk = _positive_cntk()
    out = [Source("caffe", n, _caffe(n), large=n == "caffenet") for n in CAFFE_ZOO]
    out += [Source("pytorch", n, _pytorch(n), large=n in ("resnet18", "mobilenetv2")) for n in TORCH_ZOO]
    out += [Source("keras", n, _keras(n), large=n not in ("case_study_cnn", "two_input_shared")) for n in KERAS_ZOO]
    out += [Source("mxnet", n, _mxnet(n, size), large=True) for n, size in _mxnet_zoo().items()]
    out += [Source("cntk", n, _cntk(n), positive=n in positive_cntk) for n in cntk_names()]
    out += [
        Source("onnx", "torch_export", _onnx_file(_torch_export, "torch_export")),
        Source("onnx", "tf2onnx_export", _onnx_file(_tf2onnx_export, "tf2onnx_export")),
        Source("onnx", "opset_changes", _onnx_file(_opset_changes, "opset_changes")),
    ]
    return out


def _mxnet_zoo() -> dict[str, int]:
    """model_zoo/mxnet/build.py's ZOO, name -> input size (that script imports mxnet: read, not imported)."""
    import ast

    from model_zoo.common import REPO

    tree = ast.parse((REPO / "model_zoo" / "mxnet" / "build.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ZOO" for t in node.targets):
            return dict(ast.literal_eval(node.value))
    raise LookupError("model_zoo/mxnet/build.py defines no ZOO")


def _positive_cntk() -> set[str]:
    from model_zoo.cntk.nets import CASES

    return {name for name, (_, _, positive) in CASES.items() if positive}


SOURCES: dict[str, Source] = {s.id: s for s in _catalog()}
