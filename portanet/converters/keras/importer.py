"""The "keras" importer: Keras 3 ``.keras`` / ``.h5`` files and ``keras.Model`` objects layer by
layer; TensorFlow SavedModel directories and ``tf.function`` objects through tf2onnx.

Cheap to import: TensorFlow and Keras are imported inside the methods.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from portanet.converters.registry import ConvertOptions, Importer, register_importer
from portanet.errors import ConversionError, InvalidInputError, InvalidModelError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: class names of configs that hold a layer graph rather than being a layer
_CONTAINERS = ("Functional", "Sequential", "Model")


def is_saved_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


def _head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _iter_layer_configs(config: Any) -> Iterator[tuple[str, str]]:
    """(layer name, class name) of every layer in a serialized model config, nested models included."""
    if not isinstance(config, dict):
        return
    cls = config.get("class_name")
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    if cls in _CONTAINERS or "layers" in inner:
        for layer in inner.get("layers", []) or []:
            yield from _iter_layer_configs(layer)
        return
    if cls and cls != "InputLayer":
        # raw keras.ops calls are serialized with their operation module (keras.src.ops.numpy, ...)
        is_op = str(config.get("module", "")).startswith(("keras.src.ops", "keras.ops"))
        yield str(inner.get("name", config.get("name", "?"))), f"ops.{cls}" if is_op else str(cls)


def _read_config(path: Path) -> dict[str, Any] | None:
    """The model config stored in a .keras archive or a legacy .h5 file (None if absent)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if "config.json" not in z.namelist():
                raise InvalidModelError(f"{path}: not a Keras 3 archive (no config.json inside the zip)")
            return json.loads(z.read("config.json"))
    from portanet._deps import require

    h5py = require("h5py")
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        return None
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def check_file(path: Path) -> None:
    """Validate the container format and list unsupported layers before loading any code."""
    from portanet.converters.keras.ops import HANDLERS

    if path.stat().st_size == 0:
        raise InvalidModelError(f"{path}: empty file")
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise InvalidModelError(f"{path}: not a Keras 3 .keras archive (expected a zip file, "
                                f"found bytes {head[:4]!r})")
    if suffix in (".h5", ".hdf5") and head != HDF5_MAGIC:
        raise InvalidModelError(f"{path}: not an HDF5 file (expected signature {HDF5_MAGIC!r}, found {head!r})")
    try:
        config = _read_config(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InvalidModelError(f"{path}: cannot read the Keras model ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from exc
    if config is None:
        raise InvalidModelError(f"{path}: HDF5 file holds weights only (no model_config); save the whole model")
    HANDLERS.check_supported(_iter_layer_configs(config), path=str(path))


def load_keras_file(path: Path) -> Any:
    """Load a .keras/.h5 model (safe mode, not compiled) with one-line errors."""
    _quiet_tf()
    check_file(path)
    from portanet._deps import require

    keras = require("keras")
    try:
        return keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{path}: Keras cannot load the model ({type(exc).__name__}: {first})") from exc


def is_keras_model(obj: Any) -> bool:
    if "keras" not in sys.modules:
        return False
    import keras

    return isinstance(obj, keras.Model)


def is_tf_function(obj: Any) -> bool:
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(obj, tf.types.experimental.GenericFunction | tf.types.experimental.ConcreteFunction)


@register_importer
class KerasImporter(Importer):
    name = "keras"
    title = "TensorFlow/Keras"
    suffixes = (".keras", ".h5", ".hdf5")

    def detect(self, path: Path) -> bool:
        if is_saved_model_dir(path):
            return True
        if not path.is_file():
            return False
        if path.suffix.lower() in self.suffixes:
            return True
        if _head(path) == HDF5_MAGIC:
            return True
        if zipfile.is_zipfile(path):
            try:
                with zipfile.ZipFile(path) as z:
                    names = set(z.namelist())
            except (zipfile.BadZipFile, OSError, ValueError):  # a corrupt archive is not a .keras file
                return False
            return "config.json" in names and "model.weights.h5" in names
        return False

    def convert(self, paths: Sequence[Path], options: ConvertOptions) -> ir.Model:
        if len(paths) != 1:
            raise InvalidInputError(f"Keras/TensorFlow conversion takes one model file or SavedModel folder, "
                                    f"got {len(paths)}")
        path = Path(paths[0])
        _quiet_tf()
        if path.is_dir():
            if not is_saved_model_dir(path):
                raise InvalidModelError(f"{path}: folder is not a TensorFlow SavedModel (no saved_model.pb)")
            from portanet.converters.keras.tf_graph import convert_saved_model

            return convert_saved_model(path, options)
        from portanet.converters.keras.graph import convert_model

        model = load_keras_file(path)
        return convert_model(model, options, source_files=[path], path=str(path))

    def accepts_object(self, obj: Any) -> bool:
        return is_keras_model(obj) or is_tf_function(obj)

    def convert_object(self, obj: Any, options: ConvertOptions) -> ir.Model:
        _quiet_tf()
        if is_keras_model(obj):
            from portanet.converters.keras.graph import convert_model, has_layer_graph

            if not has_layer_graph(obj) and options.example_inputs is not None:
                # a subclassed model has no layer graph to walk: trace it as a TensorFlow graph
                from portanet.converters.keras.tf_graph import convert_function, keras_call_function

                return convert_function(keras_call_function(obj), options)
            return convert_model(obj, options)
        if is_tf_function(obj):
            from portanet.converters.keras.tf_graph import convert_function

            return convert_function(obj, options)
        raise ConversionError(f"keras importer cannot convert objects of type {type(obj).__name__}")
