"""From a parsed NetParameter to the TEST-phase deploy graph portanet converts.

Steps (mirroring Caffe's own upgrade and ``Net::Init``):

1. legacy V1 ``layers`` become V2 ``layer`` messages (enum type -> type string);
2. ``input`` + ``input_shape``/``input_dim`` become one ``Input`` layer named "input";
3. ``include``/``exclude`` rules are evaluated for the TEST phase (level and stages from the
   net's ``state``);
4. data layers, losses and accuracies are removed; data-layer tops that remaining layers
   read become graph inputs;
5. weights (``blobs``) are paired with layers by name, like ``Net::CopyTrainedLayersFrom``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from portanet.converters.caffe import schema
from portanet.converters.caffe.reader import blob_array
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError

FRAMEWORK = "caffe"

#: V1 LayerType enum names whose V2 type string is not the CamelCase of the name
_V1_NAMES = {
    "ABSVAL": "AbsVal",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DATA": "Data",
    "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    "ACCURACY": "Accuracy",
}
#: V1 fields copied verbatim into the V2 layer (same message types, same names)
_V1_COPY = ("bottom", "top", "name", "include", "exclude", "loss_weight")

#: layers that feed data in training/testing; in a deploy graph their tops are inputs
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "DummyData", "WindowData"}
#: layers that only matter for training/evaluation
DROPPED_LAYERS = {"Accuracy", "HDF5Output", "Im2col"}


@dataclass
class Layer:
    """One layer of the deploy graph."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: Any  # caffe.LayerParameter (faithful schema)
    blobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class InputSpec:
    """A graph input: blob name, declared shape (None = unknown) and where it came from."""

    name: str
    shape: list[int] | None
    layer: str
    layer_type: str


@dataclass
class DeployNet:
    name: str
    inputs: list[InputSpec]
    layers: list[Layer]


def upgrade_v1(net: Any) -> Any:
    """Return ``net`` with legacy V1 ``layers`` converted to V2 ``layer`` (in place)."""
    if not net.layers:
        return net
    if net.layer:
        raise InvalidModelError("the net uses both 'layer' and legacy 'layers'; Caffe rejects such nets")
    enum = schema.messages()["V1LayerParameter"].DESCRIPTOR.enum_types_by_name["LayerType"]
    for v1 in net.layers:
        v2 = net.layer.add()
        for f in _V1_COPY:
            if f in ("bottom", "top", "include", "exclude", "loss_weight"):
                getattr(v2, f).extend(getattr(v1, f))
            elif v1.HasField(f):
                setattr(v2, f, getattr(v1, f))
        enum_name = enum.values_by_number[v1.type].name if v1.type in enum.values_by_number else str(v1.type)
        v2.type = _V1_NAMES.get(enum_name, enum_name)
        v2.blobs.extend(v1.blobs)
        for fd, value in v1.ListFields():
            if fd.name.endswith("_param") and fd.name in v2.DESCRIPTOR.fields_by_name:
                getattr(v2, fd.name).CopyFrom(value)
    net.ClearField("layers")
    return net


def _input_shape_of(net: Any, i: int) -> list[int] | None:
    if net.input_shape:
        if i < len(net.input_shape):
            return [int(d) for d in net.input_shape[i].dim]
        return None
    dims = list(net.input_dim)
    if len(dims) >= 4 * (i + 1):
        return [int(d) for d in dims[4 * i : 4 * i + 4]]
    return None


def upgrade_inputs(net: Any) -> None:
    """Turn ``input`` + ``input_shape``/``input_dim`` into a leading ``Input`` layer."""
    if not net.input:
        return
    shapes = [_input_shape_of(net, i) for i in range(len(net.input))]
    layer = schema.messages()["LayerParameter"](name="input", type="Input")
    layer.top.extend(net.input)
    if all(s is not None for s in shapes):
        for s in shapes:
            layer.input_param.shape.add().dim.extend(s)
    layers = [layer, *net.layer]
    net.ClearField("layer")
    net.layer.extend(layers)
    for f in ("input", "input_shape", "input_dim"):
        net.ClearField(f)


def _rule_matches(rule: Any, phase: int, level: int, stages: set[str]) -> bool:
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def included(layer: Any, phase: int, level: int, stages: set[str]) -> bool:
    """Caffe's ``Net::StateMeetsRule`` over a layer's include/exclude rules."""
    if layer.include and layer.exclude:
        raise InvalidModelError(f"layer '{layer.name}' has both include and exclude rules")
    if layer.include:
        return any(_rule_matches(r, phase, level, stages) for r in layer.include)
    return not any(_rule_matches(r, phase, level, stages) for r in layer.exclude)


def _is_loss(layer_type: str) -> bool:
    return layer_type.endswith("Loss")


def _crop(layer: Any, legacy: int = 0) -> int:
    """The crop size of a data layer: transform_param's, or the layer's own deprecated field."""
    return int(layer.transform_param.crop_size) or int(legacy)


def _data_layer_shape(layer: Any) -> list[int | None] | None:
    """The (N, C, H, W) a data layer fixes, None where it fixes none. Images are cropped to
    ``crop_size`` squares, else resized to ``new_height`` x ``new_width`` (ImageData); colour
    images have 3 channels. A ``Data`` layer's channels come from its database (None here,
    filled from the first convolution's weights by :func:`infer_data_channels`)."""
    if layer.type == "ImageData":
        p = layer.image_data_param
        crop = _crop(layer, p.crop_size)
        hw = [crop, crop] if crop else [int(p.new_height), int(p.new_width)]
        return [int(p.batch_size), 3 if p.is_color else 1, *hw] if all(hw) else None
    if layer.type == "Data":
        crop = _crop(layer, layer.data_param.crop_size)
        return [int(layer.data_param.batch_size or 1), None, crop, crop] if crop else None
    if layer.type == "WindowData":
        crop = _crop(layer, layer.window_data_param.crop_size)
        return [int(layer.window_data_param.batch_size or 1), 3, crop, crop] if crop else None
    if layer.type == "MemoryData" and layer.HasField("memory_data_param"):
        p = layer.memory_data_param
        return [p.batch_size, p.channels, p.height, p.width]
    if layer.type == "DummyData" and layer.HasField("dummy_data_param"):
        p = layer.dummy_data_param
        if p.shape:
            return [int(d) for d in p.shape[0].dim]
        if p.num:
            return [p.num[0], p.channels[0], p.height[0], p.width[0]]
    return None


def deploy_graph(net: Any, *, path: str, phase: int = 1, stages: set[str] | None = None) -> DeployNet:
    """Reduce a (faithful, V2-upgraded) NetParameter to the deploy graph."""
    upgrade_v1(net)
    upgrade_inputs(net)
    level = net.state.level if net.HasField("state") else 0
    stages = set(stages if stages is not None else (net.state.stage if net.HasField("state") else ()))
    inputs: list[InputSpec] = []
    layers: list[Layer] = []
    data_tops: dict[str, InputSpec] = {}
    produced: set[str] = set()
    names: set[str] = set()
    for lp in net.layer:
        if not lp.type:
            raise InvalidModelError(f"{path}: layer '{lp.name}' has no type")
        # data layers are remembered in every phase: their tops may still be read (deploy inputs)
        if lp.type in DATA_LAYERS:
            shape = _data_layer_shape(lp)
            for i, top in enumerate(lp.top):
                data_tops.setdefault(top, InputSpec(top, shape if i == 0 else None, lp.name, lp.type))
            continue
        if not included(lp, phase, level, stages):
            continue
        if _is_loss(lp.type) or lp.type in DROPPED_LAYERS:
            continue
        if lp.name in names:
            raise InvalidModelError(f"{path}: duplicate layer name '{lp.name}'")
        names.add(lp.name)
        if lp.type == "Input":
            shapes = [[int(d) for d in s.dim] for s in lp.input_param.shape]
            for i, top in enumerate(lp.top):
                shape = shapes[0] if len(shapes) == 1 else shapes[i] if i < len(shapes) else None
                inputs.append(InputSpec(top, shape, lp.name, "Input"))
                produced.add(top)
            continue
        for bottom in lp.bottom:
            if bottom not in produced:
                if bottom in data_tops:
                    inputs.append(data_tops.pop(bottom))
                    produced.add(bottom)
                else:
                    raise ConversionError(
                        f"bottom '{bottom}' is not produced by any earlier layer (known blobs: "
                        f"{', '.join(sorted(produced)[:12]) or 'none'})",
                        framework=FRAMEWORK, layer=lp.name, layer_type=lp.type, path=path,
                    )
        produced.update(lp.top)
        layers.append(Layer(lp.name, lp.type, list(lp.bottom), list(lp.top), lp))
    return DeployNet(net.name or "caffe_net", inputs, layers)


def attach_weights(deploy: DeployNet, raw_net: Any, *, path: str) -> None:
    """Pair the caffemodel's blobs with the deploy layers by layer name (Caffe's rule)."""
    by_name: dict[str, Any] = {}
    for lp in raw_net.layer:
        by_name.setdefault(lp.name, lp.blobs)
    for lp in raw_net.layers:
        by_name.setdefault(lp.name, lp.blobs)
    for layer in deploy.layers:
        blobs = by_name.get(layer.name)
        if blobs:
            layer.blobs = [blob_array(b, where=f"{path}: layer '{layer.name}' blob {i}: ") for i, b in enumerate(blobs)]


def infer_data_channels(deploy: DeployNet) -> None:
    """Fill an input's unknown channel count from the first Convolution reading it (its
    weights' input channels times the group); otherwise the shape stays unknown."""
    for spec in deploy.inputs:
        if not spec.shape or None not in spec.shape:
            continue
        channels = None
        for layer in deploy.layers:
            if spec.name in layer.bottoms:
                if layer.type == "Convolution" and layer.blobs and layer.blobs[0].ndim == 4:
                    channels = int(layer.blobs[0].shape[1]) * max(1, int(layer.param.convolution_param.group))
                break
        spec.shape = [spec.shape[0], channels, *spec.shape[2:]] if channels is not None else None


def apply_input_shapes(deploy: DeployNet, shapes: dict[str, list[int | str]], *, path: str) -> None:
    """``--input-shape`` overrides (key '' = the only input)."""
    names = [i.name for i in deploy.inputs]
    for key, dims in shapes.items():
        name = key
        if name == "":
            if len(names) != 1:
                raise InvalidInputError(
                    f"{path}: --input-shape without a name needs a single-input net; inputs: {', '.join(names)}"
                )
            name = names[0]
        spec = next((i for i in deploy.inputs if i.name == name), None)
        if spec is None:
            raise InvalidInputError(f"{path}: no input named '{name}'; inputs: {', '.join(names) or 'none'}")
        if spec.shape and len(spec.shape) != len(dims):
            raise InvalidInputError(
                f"{path}: input '{name}' is declared with rank {len(spec.shape)} {spec.shape}; "
                f"--input-shape gives {len(dims)} dims {list(dims)}"
            )
        spec.shape = list(dims)  # type: ignore[arg-type]
