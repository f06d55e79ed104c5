"""The config reader: ``.keras``/``.h5`` files converted from their config and weights alone
(``config_reader.py`` + ``config_graph.py``), without Keras.

Each model is saved by Keras (on TensorFlow, in this process) and converted three ways:
the config reader (``keras_reader="config"``, which refuses to fall back), the Keras-based
path on the same file (``keras_reader="keras"``), in both layouts. References: Keras'
own outputs (``model(x, training=False)`` on TensorFlow), and the Keras-based path's graph,
which the config reader must reproduce node for node (same ops, attributes, names, weights).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from tests.converters.keras.conftest import assert_parity, convert_in_fresh_process, random_inputs

keras = pytest.importorskip("keras")
pytest.importorskip("h5py")

import portanet  # noqa: E402
from portanet.converters.keras import config_reader  # noqa: E402
from portanet.errors import ConversionError  # noqa: E402


def _layers():
    return keras.layers


# -- model builders (each returns a built keras.Model; files are cached by builder source) ---
def resnet50():
    from model_zoo.keras.models import randomize_batchnorm

    return randomize_batchnorm(keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3)))


def mobilenet_v2():
    from model_zoo.keras.models import randomize_batchnorm

    return randomize_batchnorm(keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35))


def efficientnet_b0():
    """Normalization with adapted statistics (variables), Rescaling, squeeze-excite Multiply."""
    from model_zoo.keras.models import randomize_batchnorm

    model = randomize_batchnorm(keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3)))
    # Keras numbers layer names per process (normalization, normalization_1, ...): find it by type
    (norm,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    norm.adapt_mean.assign(np.array([0.1, 0.2, 0.3], np.float32))
    norm.adapt_variance.assign(np.array([2.0, 3.0, 4.0], np.float32))
    norm.finalize_state()
    return model


def sequential_mlp():
    lay = _layers()
    return keras.Sequential([keras.Input((12,), name="features"), lay.Dense(16, activation="relu", name="h1"),
                             lay.Dropout(0.5, name="drop"), lay.Dense(8, activation="tanh", name="h2"),
                             lay.Dense(4, activation="softmax", name="probs")], name="mlp")


def sequential_cnn():
    """Saved as legacy .h5: a Sequential there records no per-layer shapes (IR inference)."""
    lay = _layers()
    return keras.Sequential([
        keras.Input((12, 12, 2), name="image"),
        lay.Conv2D(4, 3, padding="same", activation="relu", name="c1"),
        lay.BatchNormalization(name="bn"),
        lay.MaxPooling2D(2, name="mp"),
        lay.Conv2D(6, 3, strides=2, padding="same", name="c2"),
        lay.Flatten(name="flat"),
        lay.Dense(5, name="logits"),
        lay.Softmax(name="sm"),
    ], name="cnn")


def nested_functional():
    """A Sequential and a Functional model used as layers, a layer called twice; two inputs,
    four outputs (the nested Functional's output both a model output and consumed)."""
    lay = _layers()
    a = keras.Input((10, 10, 3), name="a")
    b = keras.Input((10, 10, 3), name="b")
    block = keras.Sequential([keras.Input((10, 10, 3)), lay.Conv2D(4, 1, name="inner_conv"),
                              lay.BatchNormalization(scale=False, name="inner_bn")], name="block")
    ti = keras.Input((10, 10, 4), name="tail_in")
    tail = keras.Model(ti, lay.GlobalAveragePooling2D(name="tail_gap")(lay.ReLU(name="tail_relu")(ti)),
                       name="tail")
    ya = block(a)
    shared = lay.Conv2D(4, 1, name="b_conv")  # called twice: its second call is node 1
    y = lay.Add(name="sum")([ya, shared(b)])
    pooled = tail(y)
    return keras.Model([a, b], [pooled, lay.Activation("sigmoid", name="gate")(y), lay.Dense(2, name="head")(pooled),
                                lay.ReLU(name="shared_out")(shared(a))], name="nested")


def conv_variants():
    lay = _layers()
    x = keras.Input((16, 16, 4), name="x")
    c1 = lay.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="s2_same")(x)
    c2 = lay.Conv2D(8, 3, dilation_rate=2, padding="same", activation="relu6", name="dilated")(x)
    c3 = lay.Conv2D(8, (3, 1), groups=2, padding="valid", name="grouped")(x)
    c4 = lay.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(x)
    c5 = lay.SeparableConv2D(8, 3, padding="same", depth_multiplier=2, activation="swish", name="sep")(x)
    t = lay.Conv2DTranspose(4, 3, strides=2, padding="same", name="deconv")(c1)
    y = lay.Concatenate(name="cat")([c2, c4, c5, t])
    y = lay.Cropping2D(((1, 2), (0, 1)), name="crop")(lay.ZeroPadding2D(((1, 0), (2, 1)), name="pad")(y))
    y = lay.UpSampling2D(2, interpolation="bilinear", name="up")(lay.AveragePooling2D(3, 2, padding="same",
                                                                                       name="avg")(y))
    g = lay.GlobalMaxPooling2D(keepdims=True, name="gmax")(c3)
    # an output nobody consumes, so its shape is in no config record
    z = lay.Conv2DTranspose(3, 3, strides=2, output_padding=1, dilation_rate=1, name="deconv_out")(c1)
    return keras.Model(x, [y, lay.Multiply(name="mul")([g, lay.Conv2D(8, 1, name="proj")(c3)]), z],
                       name="conv_variants")


def norm_and_activations():
    lay = _layers()
    x = keras.Input((8, 8, 6), name="x")
    y = lay.BatchNormalization(scale=False, center=False, epsilon=1e-2, name="bn_plain")(x)
    y = lay.BatchNormalization(center=False, name="bn_scale")(y)
    y = lay.BatchNormalization(axis=1, name="bn_axis1")(y)
    y = lay.ReLU(max_value=4.0, negative_slope=0.1, threshold=0.5, name="relu_x")(y)
    y = lay.LeakyReLU(0.3, name="leaky")(lay.PReLU(shared_axes=[1, 2], name="prelu")(y))
    y = lay.ELU(0.7, name="elu")(lay.LayerNormalization(name="ln")(y))
    y = lay.GroupNormalization(groups=3, name="gn")(y)
    y = lay.UnitNormalization(name="unit")(lay.Activation("gelu", name="gelu")(y))
    y = lay.Rescaling(2.0, offset=-1.0, name="rescale")(y)
    y = lay.Normalization(mean=[0.5, 1.0, 0.0, 2.0, 1.0, 0.0], variance=[1.0, 2.0, 3.0, 4.0, 0.5, 1.5],
                          name="norm_const")(y)
    y = lay.MaxPooling2D(2, padding="valid", name="mp")(y)
    y = lay.Permute((3, 1, 2), name="perm")(y)
    y = lay.Reshape((6, 16), name="reshape")(y)
    s = lay.Subtract(name="sub")([y, lay.Dense(16, name="dense3d")(y)])
    m = lay.Maximum(name="max")([s, y])
    m = lay.Average(name="avg")([m, lay.Minimum(name="min")([s, y])])
    d = lay.Dot(axes=2, normalize=True, name="dot")([m, y])
    return keras.Model(x, lay.Softmax(axis=1, name="softmax")(lay.Flatten(name="flat")(d)), name="norm_act")


def conv1d_3d_and_embedding():
    lay = _layers()
    ids = keras.Input((7,), dtype="int32", name="ids")
    e = lay.Embedding(20, 6, name="emb")(ids)
    e = lay.Conv1D(5, 3, padding="causal", dilation_rate=2, name="causal")(e)
    e = lay.UpSampling1D(2, name="up1")(lay.ZeroPadding1D((1, 2), name="pad1")(e))
    e = lay.GlobalAveragePooling1D(name="gap1")(lay.MaxPooling1D(2, name="mp1")(e))
    v = keras.Input((4, 6, 6, 2), name="vol")
    w = lay.Conv3D(3, 2, padding="same", name="c3d")(v)
    w = lay.GlobalMaxPooling3D(name="gmp3")(lay.AveragePooling3D(2, name="ap3")(w))
    r = lay.RepeatVector(3, name="rep")(lay.Concatenate(name="cat")([e, w]))
    return keras.Model([ids, v], lay.Flatten(name="flat")(r), name="seq_and_volume")


def raw_ops():
    """Raw keras.ops calls in a functional graph: constants (numbers, arrays), broadcasting,
    unary and composite operations with config attributes (gelu approximate)."""
    ops = keras.ops
    lay = _layers()
    x = keras.Input((6, 6, 4), name="x")
    v = keras.Input((1, 6, 4), name="v")
    y = lay.Conv2D(4, 1, name="conv")(x)
    y = ops.multiply(y, ops.hard_sigmoid(ops.add(y, 3.0)))
    y = ops.subtract(y, v)  # (N, 1, 6, 4) broadcast against (N, 6, 6, 4)
    y = ops.sqrt(ops.abs(y) * np.array([1.0, 2.0, 0.5, 3.0], np.float32))
    y = ops.maximum(ops.gelu(y, approximate=True), ops.square(ops.tanh(y)))
    y = ops.divide(y, 7.0) - ops.exp(ops.negative(y))
    return keras.Model([x, v], lay.GlobalAveragePooling2D(name="gap")(y), name="raw_ops")


def custom_layer_model():
    """A registered custom layer: the config reader refuses it, the Keras path converts it."""
    lay = _layers()
    x = keras.Input((6,), name="x")
    y = _Scale(name="scale")(lay.Dense(4, name="fc")(x))
    return keras.Model(x, y, name="custom")


def unhandled_op_model():
    """A raw keras.ops call the config reader does not take (a reduction)."""
    x = keras.Input((5, 3), name="x")
    return keras.Model(x, keras.ops.mean(_layers().Dense(2, name="fc")(x), axis=1), name="unhandled_op")


@keras.saving.register_keras_serializable(package="portanet_tests")
class _Scale(keras.layers.Layer):
    def call(self, x):
        return x * 3.0


BUILDERS = {f.__name__: f for f in (resnet50, mobilenet_v2, efficientnet_b0, sequential_mlp, sequential_cnn, nested_functional,
                                    conv_variants, norm_and_activations, conv1d_3d_and_embedding,
                                    raw_ops, custom_layer_model, unhandled_op_model)}
#: builder -> file suffixes it is saved as
SUFFIXES = {"sequential_cnn": (".h5", ".k2.h5"), "nested_functional": (".keras", ".h5", ".k2.h5"),
            "norm_and_activations": (".keras", ".h5"), "conv_variants": (".keras", ".k2.h5")}


def _cache_dir() -> Path:
    from model_zoo.common import cache_dir

    return cache_dir("keras_config_reader")


_MODELS: dict[str, object] = {}


def _model_file(name: str, suffix: str) -> tuple[object, Path]:
    """The Keras model (built once per session) and its saved file, cached across sessions
    under a key of the builder's source, the Keras version and the format."""
    src = inspect.getsource(BUILDERS[name]) + keras.__version__
    tag = hashlib.sha256(src.encode()).hexdigest()[:10]
    path = _cache_dir() / f"{name}-{tag}{suffix}"
    if name not in _MODELS:
        keras.utils.set_random_seed(0)
        _MODELS[name] = BUILDERS[name]()
    if not path.exists():
        tmp = path.with_name(f".{os.getpid()}-{path.name}")
        if suffix == ".k2.h5":
            _, h5 = _model_file(name, ".h5")
            _as_keras2_h5(h5, tmp)
        else:
            _MODELS[name].save(tmp)
        os.replace(tmp, path)
    return _MODELS[name], path


def _as_keras2_h5(src: Path, dst: Path) -> None:
    """A legacy .h5 file as tf.keras 2.x writes it, made from Keras 3's: inbound nodes as
    ``[[layer, node, index, kwargs]]`` lists (a nested Functional's own node counted), no
    recorded shapes, ``batch_input_shape``, dtype names, ``LeakyReLU(alpha=)``, weight names
    with ``:0`` and a DepthwiseConv2D variable named ``depthwise_kernel``."""
    import json
    import shutil

    import h5py

    def tensors(obj):
        if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
            yield obj["config"]["keras_history"]
        elif isinstance(obj, list):
            for o in obj:
                yield from tensors(o)

    def convert(entry: dict) -> dict:
        entry = {k: v for k, v in entry.items() if k not in ("module", "registered_name", "build_config")}
        cfg = dict(entry["config"])
        if isinstance(cfg.get("dtype"), dict):
            cfg["dtype"] = cfg["dtype"]["config"]["name"]
        if entry["class_name"] == "InputLayer":
            cfg["batch_input_shape"] = cfg.pop("batch_shape")
        if entry["class_name"] == "LeakyReLU":
            cfg["alpha"] = cfg.pop("negative_slope")
        if isinstance(cfg.get("layers"), list):
            kinds = {lay["config"]["name"]: lay["class_name"] for lay in cfg["layers"]}
            cfg["layers"] = [convert(lay) for lay in cfg["layers"]]
            for lay in cfg["layers"]:
                if "inbound_nodes" in lay:
                    lay["inbound_nodes"] = [
                        [[h[0], h[1] + (kinds[h[0]] == "Functional"), h[2], {}] for h in tensors(node["args"])]
                        for node in lay["inbound_nodes"]]
        entry["config"] = cfg
        return entry

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f.attrs["model_config"] = json.dumps(convert(json.loads(f.attrs["model_config"])))
        f.attrs["keras_version"] = "2.15.0"
        weights = f["model_weights"]
        for layer in weights:
            names = [n.decode() if isinstance(n, bytes) else n for n in weights[layer].attrs["weight_names"]]
            renamed = [n.split("/", 1)[1] + ":0" if n.count("/") > 1 else n + ":0" for n in names]
            renamed = [n.replace("/kernel:", "/depthwise_kernel:") if layer.startswith("dw") else n for n in renamed]
            for old, new in zip(names, renamed):
                weights[layer].move(old, new)
            weights[layer].attrs["weight_names"] = [n.encode() for n in renamed]


def _signature(model) -> dict:
    """Everything of an IR graph a conversion decides: nodes (op, name, wiring, attributes,
    provenance), initializers (values and metadata), the interface and the recorded layouts."""
    g = model.graph
    nodes = [(n.op_type, n.name, [v.name if v is not None else "" for v in n.inputs], [v.name for v in n.outputs],
              {k: repr(a.value) for k, a in n.attributes.items()}, dict(n.metadata_props)) for n in g]
    inits = {k: (v.const_value.numpy(), dict(v.metadata_props)) for k, v in g.initializers.items()}
    io = ([(v.name, str(v.shape), v.dtype) for v in g.inputs], [(v.name, str(v.shape), v.dtype) for v in g.outputs])
    return {"nodes": nodes, "inits": inits, "io": io,
            "layouts": model.metadata_props.get("portanet.keras.layouts")}


def _assert_same_graph(got, ref) -> None:
    a, b = _signature(got), _signature(ref)
    assert a["io"] == b["io"]
    assert a["layouts"] == b["layouts"]
    assert len(a["nodes"]) == len(b["nodes"])
    for x, y in zip(a["nodes"], b["nodes"]):
        assert x == y
    assert sorted(a["inits"]) == sorted(b["inits"])
    for k, (arr, meta) in a["inits"].items():
        assert meta == b["inits"][k][1], k
        assert arr.dtype == b["inits"][k][0].dtype and np.array_equal(arr, b["inits"][k][0]), k


CASES = [(name, suffix) for name in BUILDERS if name not in ("custom_layer_model", "unhandled_op_model")
         for suffix in SUFFIXES.get(name, (".keras",))]


@pytest.mark.parametrize("nchw", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize(("name", "suffix"), CASES, ids=[f"{n}{s}" for n, s in CASES])
def test_config_reader_matches_keras_and_keras_path(name: str, suffix: str, nchw: bool) -> None:
    model, path = _model_file(name, suffix)
    fast = portanet.convert(str(path), nchw=nchw, keras_reader="config")
    # reference 1: Keras on TensorFlow, batch 2 (the batch stays symbolic)
    assert_parity(fast, model, random_inputs(model, batch=2), nchw=nchw)
    # reference 2: the Keras-based conversion of the same model builds the same graph (for a
    # tf.keras-style file: of the Keras 3 .h5 it was made from, since Keras 3 does not load a
    # tf.keras reference to a nested Functional's output)
    ref_path = _model_file(name, ".h5")[1] if suffix == ".k2.h5" else path
    _assert_same_graph(fast, portanet.convert(str(ref_path), nchw=nchw, keras_reader="keras"))


def test_weight_order_is_keras_save_order() -> None:
    """Each class's variable names, in the order Keras' save_own_variables writes them."""
    lay = keras.layers
    cases = [lay.Dense(3), lay.Dense(3, use_bias=False), lay.Conv2D(2, 3), lay.Conv1DTranspose(2, 3),
             lay.DepthwiseConv2D(3, use_bias=False), lay.SeparableConv1D(2, 3), lay.BatchNormalization(),
             lay.BatchNormalization(scale=False), lay.BatchNormalization(center=False, scale=False),
             lay.LayerNormalization(center=False), lay.GroupNormalization(groups=1, scale=False), lay.PReLU(),
             lay.Embedding(5, 2)]
    for layer in cases:
        layer.build((2, 4, 4, 4) if "2D" in type(layer).__name__ else (2, 4, 4))
        saved = [v.path.split("/")[-1] for v in layer._trainable_variables + layer._non_trainable_variables]
        assert config_reader.weight_names(type(layer).__name__, layer.get_config()) == saved, type(layer).__name__


@pytest.mark.parametrize(("name", "why"), [("custom_layer_model", "layer 'scale' is a custom class"),
                                         ("unhandled_op_model", "keras.ops call 'mean(_[0-9]+)?' \\(Mean")])
def test_unsupported_content_falls_back_to_keras(name: str, why: str, caplog) -> None:
    model, path = _model_file(name, ".keras")
    with pytest.raises(ConversionError, match=why):
        portanet.convert(str(path), keras_reader="config")
    with caplog.at_level(logging.INFO, logger="portanet.converters.keras.config_graph"):
        converted = portanet.convert(str(path))
    assert any("loading with Keras" in r.getMessage() for r in caplog.records)
    assert_parity(converted, model, random_inputs(model, batch=3), nchw=False)




def test_cli_convert_imports_no_framework(tmp_path) -> None:
    """The real `portanet convert` on a .keras and a legacy .h5 file, in a fresh process:
    Keras, TensorFlow and torch are never imported; the outputs match Keras."""
    files = [_model_file("mobilenet_v2", ".keras"), _model_file("sequential_cnn", ".h5")]
    args = []
    for i, (_, path) in enumerate(files):
        args += [str(path), str(tmp_path / f"out{i}.onnx")]
    codes, imported, output = convert_in_fresh_process(list(zip(args[::2], args[1::2])))
    assert codes == [0, 0], output
    assert imported == set(), output
    for i, (model, _) in enumerate(files):
        assert_parity(portanet.load(tmp_path / f"out{i}.onnx"), model, random_inputs(model), nchw=False)


def test_config_and_weights_that_disagree_are_left_to_keras(tmp_path) -> None:
    """A config whose Dense declares other units than its stored kernel: the config reader
    does not guess (Keras, which builds from the config, reports the file)."""
    import json
    import zipfile

    _, path = _model_file("sequential_mlp", ".keras")
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                doc = json.loads(data)
                doc["config"]["layers"][1]["config"]["units"] = 17
                data = json.dumps(doc).encode()
            dst.writestr(info, data)
    with pytest.raises(ConversionError, match="kernel of shape \\(12, 16\\) does not match the config"):
        portanet.convert(str(bad), keras_reader="config")


def test_compressed_archive(tmp_path) -> None:
    """A .keras archive whose members are deflated (Keras stores them): the weights file is
    extracted once and read like a stored one."""
    import zipfile

    model, path = _model_file("conv_variants", ".keras")
    packed = tmp_path / "packed.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    converted = portanet.convert(str(packed), keras_reader="config")
    assert_parity(converted, model, random_inputs(model), nchw=False)
