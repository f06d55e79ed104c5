"""Users' own layer handlers: ``@portanet.register_layer(framework, *layer_types)``.

One mechanism for every importer: a plugin handler is registered into that importer's
:class:`~portanet.converters.handlers.HandlerTable` (the table the built-in handlers live
in), replacing a built-in handler of the same type if there is one. It receives exactly the
arguments a built-in handler of that importer receives (see the README's plugin section):

* ``caffe``: ``fn(ctx) -> list[Out]`` (``ctx.layer``, ``ctx.bottoms``, ``ctx.b`` builder, ``ctx.blobs``)
* ``mxnet``: ``fn(ctx) -> value | list`` (``ctx.node``, ``ctx.inputs``, ``ctx.attrs``, ``ctx.b``)
* ``keras``: ``fn(ctx, layer, inputs, outputs)`` (``ctx.get``/``ctx.set``/``ctx.op``/``ctx.weight``)
* ``cntk``: ``fn(ctx, function, inputs) -> T``
* ``onnx``: ``fn(ctx) -> list[value]`` for nodes of a custom domain, keyed ``"domain::OpType"``
  (``ctx.node``, ``ctx.inputs``, ``ctx.attrs``, ``ctx.op`` emitting standard ONNX ops)

Plugins come from Python (decorate a function after ``import portanet``) or the CLI
(``--plugin my_layers.py`` loads the file, ``--import my_pkg.layers`` imports a module).
A plugin handler that fails is reported as one line naming the plugin, the layer and the problem.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from portanet.errors import InvalidInputError

log = logging.getLogger(__name__)

#: framework -> module whose import registers every built-in handler and exposes HANDLERS
TABLE_MODULES = {
    "caffe": "portanet.converters.caffe.ops",
    "mxnet": "portanet.converters.mxnet.handlers",
    "keras": "portanet.converters.keras.ops",
    "cntk": "portanet.converters.cntk.context",
    "onnx": "portanet.converters.onnx.custom",
}
#: modules to import besides the table module so that built-ins are registered first
_BUILTINS = {"cntk": "portanet.converters.cntk.ops"}

_TRUST_CODE = False


def table_for(framework: str) -> Any:
    """The HandlerTable of ``framework``, with every built-in handler already registered."""
    if framework not in TABLE_MODULES:
        raise InvalidInputError(f"register_layer: unknown framework '{framework}'; "
                                f"expected one of {', '.join(sorted(TABLE_MODULES))}")
    if framework in _BUILTINS:
        importlib.import_module(_BUILTINS[framework])
    return importlib.import_module(TABLE_MODULES[framework]).HANDLERS


def _origin(fn: Callable) -> str:
    module = sys.modules.get(fn.__module__)
    file = getattr(module, "__file__", None)
    return Path(file).name if file else fn.__module__


def register_layer(framework: str, *layer_types: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` converts source layers of ``layer_types`` for importer ``framework``
    (``"caffe"``, ``"mxnet"``, ``"keras"``, ``"cntk"``, ``"onnx"``); it replaces a built-in
    handler of the same type. For ONNX the type is ``"domain::OpType"`` of a custom-domain node.
    """
    if not layer_types:
        raise InvalidInputError("register_layer needs at least one layer type")
    table = table_for(framework)

    def deco(fn: Callable) -> Callable:
        for t in layer_types:
            table.register_plugin(t, fn, origin=_origin(fn))
        log.info("plugin %s handles %s layer(s) %s", _origin(fn), framework, ", ".join(layer_types))
        return fn

    return deco


def unregister_layer(framework: str, *layer_types: str) -> None:
    """Remove users' handlers registered for ``layer_types`` (built-in handlers come back)."""
    table = table_for(framework)
    for t in layer_types:
        table.remove_plugin(t)


def load_plugins(paths: Iterable[Path | str]) -> None:
    """Execute each plugin file (its ``@register_layer`` decorators register its handlers)."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InvalidInputError(f"--plugin {path}: no such file")
        name = f"portanet_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InvalidInputError(f"--plugin {path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except InvalidInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported in one line
            raise InvalidInputError(f"--plugin {path}: loading failed ({type(exc).__name__}: "
                                    f"{_first_line(exc)})") from exc


def import_modules(names: Iterable[str]) -> None:
    """Import each module (``--import``): registers the user's Keras classes or plugins."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInputError(f"--import {name}: cannot import the module ({type(exc).__name__}: "
                                    f"{_first_line(exc)})") from exc


def trust_code(enabled: bool = True) -> None:
    """Allow (or, with ``enabled=False``, refuse again) model files carrying executable code
    (Keras Lambda layers) in this process."""
    global _TRUST_CODE
    _TRUST_CODE = enabled


def code_trusted() -> bool:
    return _TRUST_CODE


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
