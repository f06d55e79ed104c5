"""The "keras" importer: Keras 3 ``.keras`` / ``.h5`` files and ``keras.Model`` objects layer by
layer; TensorFlow SavedModel directories and ``tf.function`` objects through tf2onnx.

Cheap to import: TensorFlow and Keras are imported inside the methods.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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


def use_light_backend(paths: Sequence[Path] = ()) -> bool:
    """Let Keras run on its torch backend instead of TensorFlow, if that is still possible.

    Converting a file needs Keras only to deserialize the model and read its weights (and to
    trace handler-less layers symbolically), never to compute; TensorFlow is the most
    expensive part of that (seconds of import, about a GB of memory). Keras chooses its
    backend once per process, when it is first imported, so this only applies when Keras is
    not imported yet and the user has not chosen a backend (``KERAS_BACKEND``). The CLI asks
    for it when ``convert`` (without ``--verify``: verification runs Keras on TensorFlow) reads
    a Keras file."""
    import importlib.util

    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND") or importlib.util.find_spec("torch") is None:
        return False
    for p in paths:
        # Lambda layers are rebuilt by running their code, which may use TensorFlow: keep it
        try:
            config = _read_config(Path(p))
        except Exception:  # noqa: BLE001 - unreadable files are reported by the conversion itself
            return False
        if config is not None and _lambda_layers(config):
            return False
    os.environ["KERAS_BACKEND"] = "torch"
    return True


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


def _lambda_layers(config: Any) -> list[str]:
    return [name for name, cls in _iter_layer_configs(config) if cls == "Lambda"]


def check_file(path: Path, *, trust_code: bool = False) -> None:
    """Validate the container format, list unsupported raw ops and refuse Lambda layers
    without ``trust_code``, all before loading any code. (Layer classes without a handler
    are traced once loaded, so they are not refused here.)"""
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
    HANDLERS.check_supported([(n, t) for n, t in _iter_layer_configs(config) if t.startswith("ops.")],
                             path=str(path))
    lambdas = _lambda_layers(config)
    if lambdas and not trust_code:
        raise InvalidModelError(f"{path}: Lambda layer(s) {', '.join(lambdas)} hold Python code that runs when "
                                "the model is loaded; pass --trust-code (trust_code=True) if you trust this file")


@contextlib.contextmanager
def _without_optional_tensorflow(keras: Any) -> Iterator[None]:
    """On a non-TensorFlow Keras backend, Keras' legacy .h5 loader still imports TensorFlow
    when it is installed (it only uses it if present); hide it while loading so that reading
    a file stays free of TensorFlow."""
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        yield
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # makes `import tensorflow` fail
    try:
        yield
    finally:
        if sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]


_MISSING_CLASS = re.compile(r"Could not locate (?:class|function) '([^']+)'")


def load_keras_file(path: Path, *, trust_code: bool | None = None) -> Any:
    """Load a .keras/.h5 model (not compiled; safe mode unless ``trust_code``, by default the
    process-wide ``--trust-code``) with one-line errors."""
    from portanet.converters.plugins import code_trusted

    trust_code = code_trusted() if trust_code is None else trust_code
    _quiet_tf()
    check_file(path, trust_code=trust_code)
    from portanet._deps import require

    keras = require("keras")
    from portanet.converters.memory import memory_cap

    try:
        # a config declaring huge layers fails inside Keras instead of exhausting the machine
        with _without_optional_tensorflow(keras), memory_cap(path.stat().st_size if path.is_file() else 0):
            return keras.saving.load_model(str(path), compile=False, safe_mode=not trust_code)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad files
        missing = _MISSING_CLASS.search(str(exc))
        if missing:
            raise InvalidModelError(f"{path}: class '{missing.group(1)}' is not registered with Keras; pass "
                                    "--import MODULE (the module defining it with "
                                    "@keras.saving.register_keras_serializable) or put it on PYTHONPATH") from exc
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


def convert_keras_model(model: Any, options: ConvertOptions, *, source_files: Sequence[Any] = (),
                        path: str | None = None) -> ir.Model:
    """A Functional/Sequential model layer by layer; a subclassed model is first traced into
    a Functional one (``trace.py``) on the input shapes given by ``--input-shape``,
    ``example_inputs`` or its build shapes, falling back to tf2onnx where tracing fails."""
    import keras

    from portanet.converters.keras.graph import convert_model, has_layer_graph

    if has_layer_graph(model) or isinstance(model, keras.Sequential):  # an unbuilt Sequential says so
        return convert_model(model, options, source_files=source_files, path=path)
    from portanet.converters.keras.trace import TraceError, subclassed_input_specs, trace_model

    specs = subclassed_input_specs(model, options, path)
    try:
        functional = trace_model(model, specs)
    except TraceError as exc:
        if options.example_inputs is None:
            raise ConversionError(f"subclassed model '{model.name}' ({type(model).__name__}): {exc}",
                                  framework="keras", path=path) from exc
        # a call that leaves keras.ops: trace it as a TensorFlow graph instead
        from portanet.converters.keras.tf_graph import convert_function, keras_call_function

        return convert_function(keras_call_function(model), options)
    # outputs named like tf2onnx names a subclassed model's outputs (what the reference runner expects)
    names = [f"output_{i}" for i in range(len(functional.outputs))]
    return convert_model(functional, options, source_files=source_files, path=path, graph_output_names=names)


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
        fast = self._convert_from_config(path, options)
        if fast is not None:
            return fast
        model = load_keras_file(path, trust_code=bool(options.extra.get("trust_code")) or None)
        return convert_keras_model(model, options, source_files=[path], path=str(path))

    @staticmethod
    def _convert_from_config(path: Path, options: ConvertOptions) -> ir.Model | None:
        """The file converted from its config and weights without Keras (``config_graph.py``),
        or None when it needs Keras. ``keras_reader="keras"`` skips this, ``"config"``
        refuses to fall back."""
        reader = options.extra.get("keras_reader", "auto")
        if reader not in ("auto", "config", "keras"):
            raise InvalidInputError(f"keras_reader must be 'auto', 'config' or 'keras', got {reader!r}")
        if reader == "keras":
            return None
        from portanet.converters.plugins import code_trusted

        check_file(path, trust_code=bool(options.extra.get("trust_code")) or code_trusted())
        from portanet.converters.keras import config_graph

        if reader == "config":
            try:
                return config_graph.convert_file(path, options)
            except config_graph.NeedsKeras as exc:
                raise ConversionError(f"the config reader cannot convert this file: {exc}", framework="keras",
                                      path=str(path)) from exc
        return config_graph.try_convert_file(path, options)

    def accepts_object(self, obj: Any) -> bool:
        return is_keras_model(obj) or is_tf_function(obj)

    def convert_object(self, obj: Any, options: ConvertOptions) -> ir.Model:
        _quiet_tf()
        if is_keras_model(obj):
            return convert_keras_model(obj, options)
        if is_tf_function(obj):
            from portanet.converters.keras.tf_graph import convert_function

            return convert_function(obj, options)
        raise ConversionError(f"keras importer cannot convert objects of type {type(obj).__name__}")
