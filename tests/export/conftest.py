"""Zoo models of every importer as IR, built once per test session, and exports shared
between test cells (``exported``) so each (model, target) pair is written once.

References: ONNX Runtime on the converted IR (an independent runtime) — every export is
compared with it in a fresh process that does not import portanet.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import onnx_ir as ir
import pytest

import portanet


def _caffe(name: str) -> ir.Model:
    from model_zoo.caffe.writer import build

    prototxt, weights = build(name)
    return portanet.convert(str(prototxt), str(weights))


@functools.cache
def case_study_caffe_files() -> tuple[Path, Path]:
    """The case-study CNN as Caffe files, with the PyTorch zoo model's seeded weights."""
    from model_zoo.case_study_nets import torch_weights, write_caffe
    from model_zoo.common import cache_dir
    from model_zoo.pytorch.models import build

    return write_caffe(torch_weights(build("case_study_cnn")), cache_dir("export", "case_study_caffe"))


def _case_study_caffe() -> ir.Model:
    return portanet.convert(*map(str, case_study_caffe_files()))


def _pytorch(name: str) -> ir.Model:
    import torch

    from model_zoo.pytorch.models import ZOO, build

    return portanet.convert(build(name), example_inputs=(torch.randn(2, *ZOO[name].input_shape),))


def _keras(name: str) -> ir.Model:
    from model_zoo.keras.models import save_model

    return portanet.convert(str(save_model(name)))


def _cntk(name: str) -> ir.Model:
    from model_zoo.cntk.nets import build

    return portanet.convert(str(build(name).path))


def _mxnet(name: str) -> ir.Model:
    import json

    from model_zoo.mxnet import build

    try:  # built once by mxnet 1.9.1 in .venv-mxnet, then read from the cache
        folder = build(("zoo", "case_study"))
    except RuntimeError as exc:
        pytest.skip(f"the MXNet zoo could not be built: {str(exc).splitlines()[0]}")
    manifest = [m for part in ("zoo", "case_study") for m in json.loads((folder / f"manifest-{part}.json").read_text())]
    shape = next(m["inputs"] for m in manifest if m["name"] == name)
    shapes = {k: ["N", *v[1:]] for k, v in shape.items()}  # the batch stays symbolic
    return portanet.convert(str(folder / f"{name}-symbol.json"), input_shapes=shapes)


#: zoo name -> IR builder (every importer; LeNet, ResNet, MobileNet v1/v2, SqueezeNet, DenseNet,
#: Inception, U-Net, the case-study CNNs, multi-input/-output nets)
ZOO: dict[str, Callable[[], ir.Model]] = {
    "caffe-case_study": _case_study_caffe,
    "caffe-lenet": lambda: _caffe("lenet"),
    "caffe-lenet_v1": lambda: _caffe("lenet_v1"),
    "caffe-caffenet": lambda: _caffe("caffenet"),
    "caffe-resnet": lambda: _caffe("resnet"),
    "caffe-squeezenet": lambda: _caffe("squeezenet"),
    "caffe-misc": lambda: _caffe("misc"),
    "pytorch-case_study_cnn": lambda: _pytorch("case_study_cnn"),
    "pytorch-lenet5": lambda: _pytorch("lenet5"),
    "pytorch-resnet18": lambda: _pytorch("resnet18"),
    "pytorch-mobilenetv2": lambda: _pytorch("mobilenetv2"),
    "pytorch-small_unet": lambda: _pytorch("small_unet"),
    "keras-case_study_cnn": lambda: _keras("case_study_cnn"),
    "keras-two_input_shared": lambda: _keras("two_input_shared"),
    "keras-inceptionv3": lambda: _keras("inceptionv3"),
    "cntk-convnet": lambda: _cntk("convnet"),
    "mxnet-case_study": lambda: _mxnet("mnist_cnn"),
    "mxnet-resnet18_v1": lambda: _mxnet("resnet18_v1"),
    "mxnet-mobilenet1.0": lambda: _mxnet("mobilenet1.0"),
    "mxnet-densenet121": lambda: _mxnet("densenet121"),
}
#: more of the same families, exported only with PORTANET_EXPORT_FULL=1 (test time)
ZOO_EXTRA: dict[str, Callable[[], ir.Model]] = {
    "keras-mobilenetv2": lambda: _keras("mobilenetv2"),
    "keras-resnet50": lambda: _keras("resnet50"),
    "keras-vgg16": lambda: _keras("vgg16"),
    "keras-efficientnetb0": lambda: _keras("efficientnetb0"),
    "mxnet-squeezenet1.1": lambda: _mxnet("squeezenet1.1"),
    "mxnet-inceptionv3": lambda: _mxnet("inceptionv3"),
    "mxnet-resnet50_v2": lambda: _mxnet("resnet50_v2"),
    "mxnet-mobilenetv2_1.0": lambda: _mxnet("mobilenetv2_1.0"),
}

_IR: dict[str, ir.Model] = {}


def zoo_ir(name: str) -> ir.Model:
    """The converted (-O1) IR of zoo model ``name``, built once per session."""
    if name not in _IR:
        _IR[name] = portanet.optimize({**ZOO, **ZOO_EXTRA}[name](), level=1)
    return _IR[name]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")
