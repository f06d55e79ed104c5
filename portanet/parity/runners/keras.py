"""Keras/TensorFlow reference runner.

``run_reference(sources, feeds, layers=None, options=None)`` runs the source model in Keras
(or TensorFlow for SavedModels and ``tf.function``s) on ``feeds`` given in the converted
IR's layout, and returns the outputs under the IR's output names in the IR's layout:

* Keras models: feeds/outputs of rank >= 3 are NCHW when the model was converted with
  ``nchw`` (``options.nchw`` / ``options["nchw"]``), else the Keras (NHWC) order.
  Intermediate layer outputs (``layers``) come from a sub-model on the layer's output
  tensor and are permuted to the layout the importer holds them in inside the IR (read from
  the IR's ``portanet.keras.layouts`` metadata when ``options`` carries the converted
  ``model`` (or ``layouts``), else channels-first for tensors of rank >= 3).
* SavedModels / ``tf.function``s: the serving signature's inputs and outputs by name;
  rank-4 tensors are NCHW with ``nchw``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from portanet.errors import InvalidInputError

LAYOUTS_KEY = "portanet.keras.layouts"


def _opt(options: Any, key: str, default: Any = None) -> Any:
    if options is None:
        return default
    if isinstance(options, Mapping):
        if key in options:
            return options[key]
        return _opt(options.get("convert_options"), key, default)
    if hasattr(options, key):
        return getattr(options, key)
    extra = getattr(options, "extra", None) or {}
    return extra.get(key, default)


def _layer_layouts(options: Any) -> dict[str, list[int]] | None:
    layouts = _opt(options, "layouts")
    if layouts is not None:
        return dict(layouts)
    model = _opt(options, "model")
    if model is not None and LAYOUTS_KEY in getattr(model, "metadata_props", {}):
        return json.loads(model.metadata_props[LAYOUTS_KEY])
    return None


def _to_keras(a: np.ndarray, nchw: bool) -> np.ndarray:
    a = np.asarray(a)
    if nchw and a.ndim >= 3:  # (N, C, *spatial) -> (N, *spatial, C)
        return np.transpose(a, (0, *range(2, a.ndim), 1))
    return a


def _from_keras(a: Any, nchw: bool) -> np.ndarray:
    a = np.asarray(a)
    if nchw and a.ndim >= 3:  # (N, *spatial, C) -> (N, C, *spatial)
        return np.transpose(a, (0, a.ndim - 1, *range(1, a.ndim - 1)))
    return a


def _source(sources: Any) -> Any:
    if isinstance(sources, list | tuple):
        if len(sources) != 1:
            raise InvalidInputError(f"the Keras reference runner takes one model, got {len(sources)} sources")
        return sources[0]
    return sources


def run_reference(
    sources: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    layers: Sequence[str] | None = None,
    options: Any = None,
) -> dict[str, np.ndarray]:
    """Run the Keras/TensorFlow source on ``feeds`` (IR layout); see the module docstring."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from portanet.converters.keras.importer import is_keras_model, is_saved_model_dir, is_tf_function

    src = _source(sources)
    nchw = bool(_opt(options, "nchw", False))
    if isinstance(src, str | os.PathLike):
        path = Path(src)
        if is_saved_model_dir(path):
            return _run_saved_model(path, feeds, nchw, layers)
        from portanet.converters.keras.importer import load_keras_file

        src = load_keras_file(path)
    if isinstance(src, SavedModelSignature):
        return _run_tf(src.fn, src.specs, src.names, feeds, nchw, layers)
    if is_keras_model(src) and not _has_graph(src):
        return _run_subclassed(src, feeds, nchw, _opt(options, "output_names"))
    if is_keras_model(src):
        return _run_keras(src, feeds, nchw, layers, _layer_layouts(options))
    if is_tf_function(src):
        return _run_function(src, feeds, nchw, layers)
    raise InvalidInputError(f"the Keras reference runner cannot run {type(src).__name__}")


def _has_graph(model: Any) -> bool:
    from portanet.converters.keras.graph import has_layer_graph

    return has_layer_graph(model)


def _run_subclassed(model: Any, feeds: Mapping[str, np.ndarray], nchw: bool,
                    output_names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """A subclassed model (converted through tf2onnx): feeds in order, outputs ``output_<i>``
    (tf2onnx's names) unless the caller gives the IR's output names; with ``nchw`` rank-4
    tensors are NCHW, as tf2onnx's inputs_as_nchw makes them."""
    xs = [np.transpose(a, (0, 2, 3, 1)) if nchw and a.ndim == 4 else a for a in map(np.asarray, feeds.values())]
    outs = model(xs[0] if len(xs) == 1 else xs, training=False)
    outs = [np.asarray(o) for o in (outs if isinstance(outs, list | tuple) else [outs])]
    names = list(output_names) if output_names and len(output_names) == len(outs) else [
        f"output_{i}" for i in range(len(outs))]
    return {n: (np.transpose(o, (0, 3, 1, 2)) if nchw and o.ndim == 4 else o) for n, o in zip(names, outs)}


def _run_keras(model: Any, feeds: Mapping[str, np.ndarray], nchw: bool, layers: Sequence[str] | None,
               layouts: dict[str, list[int]] | None) -> dict[str, np.ndarray]:
    from portanet.converters.keras.graph import functional_of, input_names, output_names

    fn = functional_of(model)
    names = input_names(model)
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InvalidInputError(f"missing input(s) {', '.join(missing)}; the model takes {', '.join(names)}")
    xs = [_to_keras(feeds[n], nchw) for n in names]
    outs = fn(xs if len(xs) > 1 else xs[0], training=False)
    outs = list(outs) if isinstance(outs, list | tuple) else [outs]
    result = {n: _from_keras(o, nchw) for n, o in zip(output_names(model), outs)}
    for name in layers or ():
        out = _layer_output(fn, xs, name)
        if out is None:
            continue
        value = np.asarray(out)
        if layouts is not None:
            perm = layouts.get(name, list(range(value.ndim)))
            result[name] = np.transpose(value, perm) if len(perm) == value.ndim else value
        else:
            result[name] = _from_keras(value, True)
    return result


def _layer_output(model: Any, xs: list[np.ndarray], name: str) -> Any:
    """The first output of layer ``name`` (searched in nested models too) for inputs ``xs``."""
    import keras

    from portanet.converters.keras.graph import functional_of, iter_nodes

    fn = functional_of(model)
    # a shared layer reports its last call in graph order, like the last IR node of its name
    nodes = [n for n in iter_nodes(fn) if n.operation.name == name and not isinstance(n.operation, keras.Model)]
    if nodes and not isinstance(nodes[-1].operation, keras.layers.InputLayer):
        sub = keras.Model(_one_or_list(fn.inputs), nodes[-1].output_tensors[0])
        return sub(xs if len(xs) > 1 else xs[0], training=False)
    for node in reversed(list(iter_nodes(fn))):  # the nested model's last call, as in the IR walk
        layer = node.operation
        if isinstance(layer, keras.Model) and _contains(layer, name):
            feed_model = keras.Model(_one_or_list(fn.inputs), _one_or_list(list(node.input_tensors)))
            inner = feed_model(xs if len(xs) > 1 else xs[0], training=False)
            inner = [np.asarray(t) for t in (inner if isinstance(inner, list | tuple) else [inner])]
            return _layer_output(layer, inner, name)
    return None  # not a layer of this model (e.g. an IR-only node): left out


def _one_or_list(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items


def _contains(model: Any, name: str) -> bool:
    import keras

    for layer in model.layers:
        if layer.name == name or (isinstance(layer, keras.Model) and _contains(layer, name)):
            return True
    return False


def _run_tf(fn: Any, specs: list[Any], names: list[str], feeds: Mapping[str, np.ndarray], nchw: bool,
            layers: Sequence[str] | None) -> dict[str, np.ndarray]:
    # intermediate outputs of TensorFlow graphs are not available: requested layers are left out
    import tensorflow as tf

    missing = [n for n in names if n not in feeds]
    if missing:
        raise InvalidInputError(f"missing input(s) {', '.join(missing)}; the graph takes {', '.join(names)}")
    args = []
    for n, spec in zip(names, specs):
        a = np.asarray(feeds[n])
        if nchw and a.ndim == 4:
            a = np.transpose(a, (0, 2, 3, 1))
        args.append(tf.constant(a, dtype=spec.dtype))
    outs = fn(*args)
    if isinstance(outs, Mapping):
        items = list(outs.items())
    elif isinstance(outs, list | tuple):
        items = [(f"output_{i}", o) for i, o in enumerate(outs)]
    else:
        items = [("output_0", outs)]
    result = {}
    for k, v in items:
        a = np.asarray(v)
        result[k] = np.transpose(a, (0, 3, 1, 2)) if nchw and a.ndim == 4 else a
    return result


class SavedModelSignature:
    """A loaded SavedModel's serving signature (what ``prepare`` hands back for a folder)."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        from portanet.converters.keras.tf_graph import signature_function

        self.path = path
        self._loaded = tf.saved_model.load(str(path))  # keeps the variables alive
        self.fn, self.specs, self.names = signature_function(self._loaded, path)


def _run_saved_model(path: Path, feeds: Mapping[str, np.ndarray], nchw: bool,
                     layers: Sequence[str] | None) -> dict[str, np.ndarray]:
    sig = SavedModelSignature(path)
    return _run_tf(sig.fn, sig.specs, sig.names, feeds, nchw, layers)


def prepare(sources: Any, options: Any = None) -> list[Any]:
    """Load the source once (a .keras/.h5 file, a SavedModel folder) for repeated runs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from portanet.converters.keras.importer import is_saved_model_dir, load_keras_file

    src = _source(sources)
    if isinstance(src, str | os.PathLike):
        path = Path(src)
        return [SavedModelSignature(path) if is_saved_model_dir(path) else load_keras_file(path)]
    return [src]


def _run_function(fn: Any, feeds: Mapping[str, np.ndarray], nchw: bool,
                  layers: Sequence[str] | None) -> dict[str, np.ndarray]:
    from portanet.converters.keras.tf_graph import input_signature_of
    from portanet.converters.registry import ConvertOptions

    specs = input_signature_of(fn, ConvertOptions())
    names = [s.name or f"input_{i}" for i, s in enumerate(specs)]
    return _run_tf(fn, specs, names, feeds, nchw, layers)
