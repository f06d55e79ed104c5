"""Read a Keras file without Keras: the model config (JSON) and the weights (HDF5, via h5py).

Two containers are understood:

* Keras 3 ``.keras``: a zip holding ``config.json`` and ``model.weights.h5``. Each layer's
  variables are datasets ``vars/0``, ``vars/1``, ... of its group, in the order Keras'
  ``save_own_variables`` writes them (trainable variables first, then the non-trainable
  ones, each in creation order). Groups are keyed by the layer's class name in snake case
  (``conv2d``, ``conv2d_1``, ...); Keras 3.4+ also records the layer's own name as the
  ``name`` attribute of its ``vars`` group, which is what this reader uses.
* legacy HDF5 ``.h5`` (Keras 3's ``model.save("m.h5")`` and tf.keras 2.x files): the config is
  the ``model_config`` attribute, weights are ``model_weights/<layer>/<weight name>`` listed,
  in the layer's weight order, by the group's ``weight_names`` attribute (``conv1/kernel``,
  ``inner/conv1/kernel`` inside a nested model; tf.keras adds ``:0``). Keras 2 configs list a
  call's inputs as ``[[layer, node, index, kwargs], ...]`` and record no tensor shapes (they
  are inferred from the IR as the walk goes).

``read_model`` turns the config into a ``ModelSpec`` graph (layers, call nodes, tensor
references with the shapes Keras recorded) for ``config_graph.py``. Anything this reader
cannot take exactly (a class it does not know, a custom or registered class, quantized or
LoRA layers, mixed precision, masks, an unknown container layout) raises ``NeedsKeras``
with the reason; the importer then loads the file with Keras instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: model classes whose config holds a layer graph
MODEL_CLASSES = ("Functional", "Model", "Sequential")


class NeedsKeras(Exception):
    """The file holds something only Keras itself can read; the message says what."""


# -- which variables each layer class saves, in save order ---------------------------------
def _bias(cfg: dict[str, Any]) -> list[str]:
    return ["bias"] if cfg.get("use_bias", True) else []


def _norm_params(cfg: dict[str, Any]) -> list[str]:
    return (["gamma"] if cfg.get("scale", True) else []) + (["beta"] if cfg.get("center", True) else [])


_SPECS: dict[str, Callable[[dict[str, Any]], list[str]]] = {}


def _spec(fn: Callable[[dict[str, Any]], list[str]], *classes: str) -> None:
    for c in classes:
        _SPECS[c] = fn


_NONE: Callable[[dict[str, Any]], list[str]] = lambda cfg: []  # noqa: E731
_spec(lambda cfg: ["kernel", *_bias(cfg)], "Dense", "Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D",
      "DepthwiseConv2D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
_spec(lambda cfg: ["depthwise_kernel", "pointwise_kernel", *_bias(cfg)], "SeparableConv1D", "SeparableConv2D")
_spec(lambda cfg: [*_norm_params(cfg), "moving_mean", "moving_variance"], "BatchNormalization")
_spec(_norm_params, "LayerNormalization", "GroupNormalization")
_spec(lambda cfg: ["alpha"], "PReLU")
# adapted statistics are variables; statistics given to the constructor live in the config
_spec(lambda cfg: ["mean", "variance", "count"] if cfg.get("mean") is None else [], "Normalization")
_spec(lambda cfg: ["embeddings"], "Embedding")
_spec(_NONE, "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
      "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
      *(f"Global{k}Pooling{d}D" for k in ("Average", "Max") for d in (1, 2, 3)),
      "Flatten", "Reshape", "Permute", "RepeatVector",
      *(f"{k}{d}D" for k in ("ZeroPadding", "Cropping", "UpSampling") for d in (1, 2, 3)),
      "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
      "Identity", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
      "GaussianDropout", "AlphaDropout", "ActivityRegularization", "UnitNormalization", "Rescaling")

#: config entries older (Keras 2) configs may lack, with the value Keras 3 assumes
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    **{c: {"groups": 1} for c in ("Conv1D", "Conv2D", "Conv3D")},
    **{f"Global{k}Pooling{d}D": {"keepdims": False} for k in ("Average", "Max") for d in (1, 2, 3)},
}
#: Keras 2 config keys Keras 3 renamed (old -> new)
CONFIG_RENAMES: dict[str, dict[str, str]] = {"LeakyReLU": {"alpha": "negative_slope"}}

#: variables Keras creates non-trainable, per class
NON_TRAINABLE: dict[str, tuple[str, ...]] = {"BatchNormalization": ("moving_mean", "moving_variance"),
                                             "Normalization": ("mean", "variance", "count")}


def supported_classes() -> list[str]:
    """Layer classes the config reader converts without Keras."""
    return sorted(_SPECS)


def weight_names(class_name: str, config: dict[str, Any]) -> list[str]:
    """The variable names a layer of ``class_name`` saves, in save order."""
    return _SPECS[class_name](config)


def _ints(v: Any, n: int) -> list[int]:
    return [int(v)] * n if isinstance(v, int) else [int(i) for i in v]


def _expected_dims(class_name: str, cfg: dict[str, Any]) -> dict[str, dict[int, int]]:
    """weight name -> {axis: size} that the config fixes (what Keras would build from it)."""
    digits = re.search(r"(\d)D", class_name)
    n = int(digits.group(1)) if digits else 0
    if class_name == "Dense":
        return {"kernel": {-1: int(cfg["units"])}, "bias": {0: int(cfg["units"])}}
    if class_name == "Embedding":
        return {"embeddings": {0: int(cfg["input_dim"]), 1: int(cfg["output_dim"])}}
    if not n or "kernel_size" not in cfg:
        return {}
    ks = dict(enumerate(_ints(cfg["kernel_size"], n)))
    if class_name.startswith("Depthwise"):
        return {"kernel": {**ks, -1: int(cfg["depth_multiplier"])}}
    if class_name.startswith("Separable"):
        return {"depthwise_kernel": {**ks, -1: int(cfg["depth_multiplier"])},
                "pointwise_kernel": {**dict.fromkeys(range(n), 1), -1: int(cfg["filters"])},
                "bias": {0: int(cfg["filters"])}}
    out_axis = -2 if class_name.endswith("Transpose") else -1
    return {"kernel": {**ks, out_axis: int(cfg["filters"])}, "bias": {0: int(cfg["filters"])}}


def check_weight_shapes(layer: LayerSpec, shapes: dict[str, tuple[int, ...]]) -> None:
    """The stored variables have the sizes the layer's config gives them (a file whose config
    and weights disagree is left to Keras, which reports it)."""
    try:
        expected = _expected_dims(layer.class_name, layer.config)
    except (KeyError, TypeError, ValueError) as exc:
        raise NeedsKeras(f"layer '{layer.name}' ({layer.class_name}): unexpected config ({exc})") from exc
    for wname, dims in expected.items():
        shape = shapes.get(wname)
        if shape is None:
            continue
        for axis, size in dims.items():
            if not -len(shape) <= axis < len(shape) or shape[axis] != size:
                raise NeedsKeras(f"layer '{layer.name}' ({layer.class_name}): weight {wname} of shape "
                                 f"{tuple(shape)} does not match the config")


def _config_refusal(class_name: str, cfg: dict[str, Any]) -> str | None:
    """Why a known class in this configuration still needs Keras (None: it does not)."""
    if cfg.get("lora_rank") or cfg.get("quantization_config"):
        return "LoRA or quantized weights"
    dtype = cfg.get("dtype")
    if isinstance(dtype, dict):
        if dtype.get("class_name") not in (None, "DTypePolicy", "FloatDTypePolicy"):
            return f"dtype policy {dtype.get('class_name')}"
        dtype = (dtype.get("config") or {}).get("name")
    if dtype not in (None, "float32") and class_name != "Embedding":
        return f"dtype {dtype}"
    if class_name == "Embedding" and cfg.get("mask_zero"):
        return "a mask (mask_zero=True)"
    if class_name == "LayerNormalization" and cfg.get("rms_scaling"):
        return "rms_scaling=True"
    return None


# -- the graph ------------------------------------------------------------------------------
@dataclass
class TensorRef:
    """A Keras tensor as the config refers to it: output ``index`` of call ``node`` of ``layer``."""

    layer: str
    node: int
    index: int
    shape: tuple[int | None, ...] | None = None
    dtype: str | None = None
    #: written in the Keras 2 list format (which counts a nested Functional's own node)
    legacy: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.layer, self.node, self.index)


@dataclass
class NodeSpec:
    """One call of a layer: the tensors it was called on (flattened, in argument order)."""

    layer: str
    index: int
    inputs: list[TensorRef]
    #: a raw keras.ops call: its positional arguments (TensorRefs and constants) and keywords
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayerSpec:
    name: str
    class_name: str
    config: dict[str, Any]
    nodes: list[NodeSpec] = field(default_factory=list)
    #: a raw keras.ops operation (handled as ``ops.<class_name>``) rather than a layer
    is_op: bool = False
    #: a nested model used as a layer
    model: ModelSpec | None = None
    #: weight name -> zero-argument reader of the array
    weights: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    trainable: bool = True


@dataclass
class ModelSpec:
    name: str
    class_name: str
    layers: dict[str, LayerSpec]
    inputs: list[TensorRef]
    outputs: list[TensorRef]
    trainable: bool = True


def _keras_tensor(obj: Any) -> TensorRef | None:
    if not (isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__"):
        return None
    cfg = obj.get("config") or {}
    hist = cfg.get("keras_history")
    if not (isinstance(hist, list) and len(hist) == 3):
        raise NeedsKeras("a tensor reference without keras_history")
    shape = cfg.get("shape")
    return TensorRef(str(hist[0]), int(hist[1]), int(hist[2]),
                     tuple(shape) if isinstance(shape, list) else None, cfg.get("dtype"))


def _node_inputs(node: Any, layer: str) -> list[TensorRef]:
    """The tensors of one inbound node (Keras 3 format: ``{"args": [...], "kwargs": {...}}``)."""
    if isinstance(node, list):
        return _legacy_node_inputs(node, layer)
    if not isinstance(node, dict) or "args" not in node:
        raise NeedsKeras(f"layer '{layer}': an inbound node of an unknown format")
    refs: list[TensorRef] = []
    args = node.get("args") or []
    for arg in args:
        items = arg if isinstance(arg, list) else [arg]
        for item in items:
            ref = _keras_tensor(item)
            if ref is None:
                raise NeedsKeras(f"layer '{layer}': a call argument that is not a tensor")
            refs.append(ref)
    for key, value in (node.get("kwargs") or {}).items():
        if _contains_tensor(value):
            raise NeedsKeras(f"layer '{layer}': a tensor passed as '{key}='")
    return refs


def _op_node(node: Any, layer: str, index: int) -> NodeSpec:
    """A raw keras.ops call: tensors and constants (numbers, ``__tensor__``/``__numpy__``
    arrays) as positional arguments, constant keywords."""
    if not isinstance(node, dict) or "args" not in node:
        raise NeedsKeras(f"operation '{layer}': an inbound node of an unknown format")

    def value(obj: Any) -> Any:
        ref = _keras_tensor(obj)
        if ref is not None:
            return ref
        if isinstance(obj, dict) and obj.get("class_name") in ("__tensor__", "__numpy__"):
            cfg = obj.get("config") or {}
            return np.asarray(cfg.get("value"), dtype=cfg.get("dtype") or None)
        if isinstance(obj, bool | int | float) or obj is None:
            return obj
        raise NeedsKeras(f"operation '{layer}': an argument {json.dumps(obj)[:60]}")

    args = [value(a) for a in node.get("args") or []]
    kwargs = {k: value(v) for k, v in (node.get("kwargs") or {}).items()}
    refs = [a for a in [*args, *kwargs.values()] if isinstance(a, TensorRef)]
    return NodeSpec(layer, index, refs, args, kwargs)


def _legacy_node_inputs(node: list, layer: str) -> list[TensorRef]:
    """Keras 2: ``[[layer, node, index, kwargs], ...]``, kwargs holding no tensors."""
    refs = []
    for entry in node:
        if not (isinstance(entry, list) and len(entry) in (3, 4) and isinstance(entry[0], str)):
            raise NeedsKeras(f"layer '{layer}': an inbound node entry {entry!r:.60}")
        kwargs = entry[3] if len(entry) == 4 else {}
        if not isinstance(kwargs, dict) or any(isinstance(v, list | dict) for v in kwargs.values()):
            raise NeedsKeras(f"layer '{layer}': call arguments {kwargs!r:.60}")
        refs.append(TensorRef(entry[0], int(entry[1]), int(entry[2]), legacy=True))
    return refs


def _contains_tensor(obj: Any) -> bool:
    if isinstance(obj, dict):
        return obj.get("class_name") == "__keras_tensor__" or any(_contains_tensor(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_contains_tensor(v) for v in obj)
    return False


def _endpoint_refs(spec: Any, what: str) -> list[TensorRef]:
    """``input_layers``/``output_layers``: ``[name, node, index]`` or a list of those."""
    if isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str):
        spec = [spec]
    if not isinstance(spec, list) or not all(isinstance(s, list) and len(s) == 3 for s in spec):
        raise NeedsKeras(f"model {what} in a nested structure (dict or tree)")
    return [TensorRef(str(s[0]), int(s[1]), int(s[2])) for s in spec]


def _check_class(entry: dict[str, Any]) -> None:
    cls = str(entry.get("class_name"))
    module = entry.get("module")
    registered = entry.get("registered_name")
    name = (entry.get("config") or {}).get("name", "?")
    if module is not None and not (module == "keras" or str(module).startswith("keras.")):
        raise NeedsKeras(f"layer '{name}' is a custom class {module}.{cls}")
    if registered not in (None, cls):
        raise NeedsKeras(f"layer '{name}' is a registered class '{registered}'")
    if cls in MODEL_CLASSES or cls == "InputLayer":
        return
    if is_op(entry):
        if cls not in op_classes():
            raise NeedsKeras(f"keras.ops call '{name}' ({cls}; the config reader converts "
                             f"{len(op_classes())} elementwise operations)")
        return
    if cls not in _SPECS:
        raise NeedsKeras(f"layer '{name}' of class {cls} (the config reader knows {len(_SPECS)} classes)")
    why = _config_refusal(cls, entry.get("config") or {})
    if why:
        raise NeedsKeras(f"layer '{name}' ({cls}) with {why}")


def is_op(entry: dict[str, Any]) -> bool:
    """A raw keras.ops call recorded in a functional graph (not a layer)."""
    return str(entry.get("module", "")).startswith(("keras.src.ops", "keras.ops"))


def op_classes() -> dict[str, tuple[str, ...]]:
    """keras.ops operations the config reader converts -> the parameter names of their
    ``call`` (what the ``ops.*`` handlers bind the node's arguments to): the elementwise ones,
    whose attributes are all in their config."""
    from portanet.converters.keras.ops import keras_ops

    unary = {name: ("x",) for name in [*keras_ops._UNARY, *keras_ops._COMPOSITE]}
    return {**unary, **{name: ("x1", "x2") for name in keras_ops._BINARY}}


def _input_shape(cfg: dict[str, Any]) -> tuple[int | None, ...]:
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if not isinstance(shape, list):
        raise NeedsKeras(f"input layer '{cfg.get('name')}' without batch_shape")
    return tuple(shape)


def parse_model(entry: dict[str, Any], trainable: bool = True) -> ModelSpec:
    """A model config (``{"class_name": "Functional"|"Sequential", "config": {...}}``) as a graph."""
    _check_class(entry)
    cls = entry.get("class_name")
    cfg = entry.get("config") or {}
    if cls not in MODEL_CLASSES:
        raise NeedsKeras(f"the file holds a {cls}, not a Functional or Sequential model")
    if not isinstance(cfg.get("layers"), list):
        raise NeedsKeras(f"a subclassed model ({cls} without a layer list)")
    trainable = trainable and bool(cfg.get("trainable", True))
    name = str(cfg.get("name", "model"))
    if cls == "Sequential":
        return _parse_sequential(name, cfg, trainable)
    layers: dict[str, LayerSpec] = {}
    for item in cfg["layers"]:
        layer = _parse_layer(item, trainable)
        for i, node in enumerate(item.get("inbound_nodes") or []):
            layer.nodes.append(_op_node(node, layer.name, i) if layer.is_op
                               else NodeSpec(layer.name, i, _node_inputs(node, layer.name)))
        layers[layer.name] = layer
    model = ModelSpec(name, "Functional", layers, _endpoint_refs(cfg.get("input_layers"), "inputs"),
                      _endpoint_refs(cfg.get("output_layers"), "outputs"), trainable)
    for layer in layers.values():
        for node in layer.nodes:
            for ref in node.inputs:
                target = layers.get(ref.layer)
                if ref.legacy and target is not None and target.class_name in ("Functional", "Model"):
                    ref.node -= 1  # see below
    for ref in model.inputs + model.outputs:
        if ref.layer not in layers:
            raise NeedsKeras(f"model input/output refers to an unknown layer '{ref.layer}'")
        if layers[ref.layer].class_name in ("Functional", "Model"):
            # here (only) Keras counts a nested Functional's own construction node as call 0
            ref.node -= 1
    for ref in model.inputs:
        layers[ref.layer].config.setdefault("name", ref.layer)
        ref.shape, ref.dtype = _input_shape(layers[ref.layer].config), layers[ref.layer].config.get("dtype")
    return model


def _parse_layer(item: dict[str, Any], trainable: bool) -> LayerSpec:
    _check_class(item)
    cls = str(item["class_name"])
    cfg = {**CONFIG_DEFAULTS.get(cls, {}), **(item.get("config") or {})}
    for old, new in CONFIG_RENAMES.get(cls, {}).items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    name = str(cfg.get("name", item.get("name")))
    layer = LayerSpec(name, cls, cfg, trainable=trainable and bool(cfg.get("trainable", True)), is_op=is_op(item))
    if cls in MODEL_CLASSES:
        layer.model = parse_model(item, trainable)
        layer.model.name = name
    return layer


def _parse_sequential(name: str, cfg: dict[str, Any], trainable: bool) -> ModelSpec:
    """A Sequential model as the chain Keras builds: its InputLayer, then one call per layer;
    each layer's input shape is its ``build_config`` (when saved)."""
    items = list(cfg["layers"])
    if not items or items[0].get("class_name") != "InputLayer":
        # Keras would build an InputLayer with a generated name: leave that to Keras
        raise NeedsKeras("a Sequential model without an InputLayer in its config")
    first = _parse_layer(items[0], trainable)
    layers = {first.name: first}
    shape = _input_shape(first.config)
    prev = TensorRef(first.name, 0, 0, shape, first.config.get("dtype"))
    inputs = [TensorRef(first.name, 0, 0, shape, first.config.get("dtype"))]
    for item in items[1:]:
        layer = _parse_layer(item, trainable)
        if layer.name in layers:
            raise NeedsKeras(f"layer name '{layer.name}' used twice")
        built = (item.get("build_config") or {}).get("input_shape")
        ref = TensorRef(prev.layer, prev.node, prev.index,
                        tuple(built) if isinstance(built, list) and prev.shape is None else prev.shape)
        layer.nodes.append(NodeSpec(layer.name, 0, [ref]))
        layers[layer.name] = layer
        prev = TensorRef(layer.name, 0, 0, None)
    return ModelSpec(name, "Sequential", layers, inputs, [TensorRef(prev.layer, 0, 0)], trainable)


# -- files ----------------------------------------------------------------------------------
class _ZipMember(io.RawIOBase):
    """A stored (uncompressed) zip member read in place: h5py opens it without a copy."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._start, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: Any) -> int:
        n = max(0, min(len(buf), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buf)[:n])
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def _member_data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if header[:4] != b"PK\x03\x04":
        raise NeedsKeras("a zip member without a local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


@contextlib.contextmanager
def _weights_h5(path: Path) -> Iterator[Any]:
    """The archive's model.weights.h5 opened with h5py (read in place when stored)."""
    from portanet._deps import require

    h5py = require("h5py")

    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if "model.weights.h5" not in names:
            raise NeedsKeras("no model.weights.h5 in the archive (sharded or npz weights)")
        info = z.getinfo("model.weights.h5")
    if info.compress_type == zipfile.ZIP_STORED:
        start = _member_data_offset(path, info)
        raw = _ZipMember(path, start, info.file_size)
        try:
            with h5py.File(raw, "r") as f:
                yield f, (path, start)
        finally:
            raw.close()
        return
    with tempfile.TemporaryDirectory() as tmp:  # compressed archive: extract once
        target = Path(tmp) / "model.weights.h5"
        with zipfile.ZipFile(path) as z, z.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        with h5py.File(target, "r") as f:
            yield f, (target, 0)


#: (file holding the HDF5 data, where the HDF5 file starts in it)
Source = tuple[Path, int]


def _dataset_reader(ds: Any, source: Source) -> Callable[[], np.ndarray]:
    """A reader of the dataset's array: straight from the file at its offset when HDF5 stores
    it as one contiguous block (what Keras writes), else through h5py."""
    if "dtype" in ds.attrs:  # bfloat16 and other dtypes numpy lacks
        raise NeedsKeras(f"weights stored as {ds.attrs['dtype']}")
    offset = ds.id.get_offset()
    if offset is None or ds.chunks is not None or ds.external or ds.dtype.kind not in "biuf" or not ds.size:
        return lambda: np.asarray(ds[()])
    path, start = source
    dtype, shape, count = ds.dtype, ds.shape, int(ds.size)
    return lambda: np.fromfile(path, dtype=dtype, count=count, offset=start + offset).reshape(shape)


def _attach_keras3_weights(model: ModelSpec, group: Any, where: str, source: Source) -> None:
    """Bind ``layers/<key>/vars/<i>`` to the layers (nested models recursively)."""
    by_name: dict[str, Any] = {}
    sub = group.get("layers")
    for key in (sub.keys() if sub is not None else []):
        entry = sub[key]
        vars_group = entry.get("vars")
        name = vars_group.attrs.get("name") if vars_group is not None else None
        if name is None:
            raise NeedsKeras(f"weights group {where}layers/{key} without the layer name (an older Keras 3 file)")
        by_name[name.decode() if isinstance(name, bytes) else str(name)] = (entry, vars_group)
    for layer in model.layers.values():
        entry, stored = by_name.get(layer.name, (None, None))
        if layer.model is not None:
            if entry is None:
                raise NeedsKeras(f"no weights group for nested model '{layer.name}'")
            _attach_keras3_weights(layer.model, entry, f"{where}layers/{layer.name}/", source)
            continue
        if layer.class_name == "InputLayer" or layer.is_op:
            continue
        want = weight_names(layer.class_name, layer.config)
        datasets = [stored[str(i)] for i in range(len(stored))] if stored is not None else []
        if len(datasets) != len(want):
            raise NeedsKeras(f"layer '{layer.name}' ({layer.class_name}) has {len(datasets)} saved variables, "
                             f"expected {len(want)} ({', '.join(want) or 'none'})")
        for wname, ds in zip(want, datasets):
            layer.weights[wname] = _dataset_reader(ds, source)
        check_weight_shapes(layer, {w: ds.shape for w, ds in zip(want, datasets)})


def _attach_legacy_weights(model: ModelSpec, group: Any, source: Source, prefix: tuple[str, ...] = ()) -> None:
    """Bind ``model_weights/<layer>/<weight name>`` (names like ``conv1/kernel`` or, inside a
    nested model, ``inner/conv1/kernel``) to the layers."""
    for layer in model.layers.values():
        if layer.class_name == "InputLayer" or layer.is_op:
            continue
        top = prefix[0] if prefix else layer.name
        if top not in group:
            if layer.model is None and not weight_names(layer.class_name, layer.config):
                continue
            raise NeedsKeras(f"no weights group for layer '{layer.name}'")
        entry = group[top]
        if layer.model is not None:
            _attach_legacy_weights(layer.model, group, source, (*prefix, layer.name) if prefix else (layer.name,))
            continue
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in entry.attrs.get("weight_names", [])]
        if prefix:  # a nested model's group lists every inner layer's weights: keep this layer's
            names = [n for n in names if n.split("/")[-2:-1] == [layer.name]]
        want = weight_names(layer.class_name, layer.config)
        if len(names) != len(want):
            raise NeedsKeras(f"layer '{layer.name}' ({layer.class_name}) has weights {names}, expected {want}")
        # Keras loads these by position (the variable names differ across versions, e.g. a
        # Keras 2 DepthwiseConv2D's depthwise_kernel is Keras 3's kernel)
        stored = {w: entry[n] for w, n in zip(want, names)}
        for wname in want:
            layer.weights[wname] = _dataset_reader(stored[wname], source)
        check_weight_shapes(layer, {w: d.shape for w, d in stored.items()})


@contextlib.contextmanager
def read_model(path: Path) -> Iterator[ModelSpec]:
    """The model in a ``.keras`` archive or legacy ``.h5`` file, weights readable while open."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
        model = parse_model(config)
        with _weights_h5(path) as (f, source):
            _attach_keras3_weights(model, f, "", source)
            yield model
        return
    from portanet._deps import require

    h5py = require("h5py")
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
        if raw is None or "model_weights" not in f:
            raise NeedsKeras("an HDF5 file without model_config/model_weights")
        model = parse_model(json.loads(raw.decode() if isinstance(raw, bytes) else raw))
        _attach_legacy_weights(model, f["model_weights"], (path, 0))
        yield model
