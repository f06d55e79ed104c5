"""Op-handler tables: one table per importer, one module per op family registers into it.

    HANDLERS = HandlerTable("caffe")

    @HANDLERS.register("ReLU")
    def relu(ctx, layer): ...

Before converting, an importer calls ``HANDLERS.check_supported(...)`` with every
(layer name, layer type) of the source graph, which raises one UnsupportedOpError listing
every unsupported type. ``HANDLERS.call`` wraps a handler's failure with the layer's
framework, name and type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from portanet.errors import ConversionError, PortanetError, UnsupportedOpError

Handler = Callable[..., Any]


class HandlerTable:
    def __init__(self, framework: str) -> None:
        self.framework = framework
        self._handlers: dict[str, Handler] = {}
        #: types accepted but converted to nothing (e.g. Silence) or handled by the importer itself
        self.ignored: set[str] = set()
        #: op type -> where the user's plugin handler came from (``portanet.register_layer``)
        self.plugins: dict[str, str] = {}
        self._replaced: dict[str, Handler] = {}

    def register(self, *op_types: str) -> Callable[[Handler], Handler]:
        """Decorator registering a handler for one or more source op types."""

        def deco(fn: Handler) -> Handler:
            for t in op_types:
                if t in self._handlers:
                    raise RuntimeError(f"duplicate {self.framework} handler for {t}")
                self._handlers[t] = fn
            return fn

        return deco

    def register_plugin(self, op_type: str, fn: Handler, *, origin: str) -> None:
        """A user's handler for ``op_type`` (replacing a built-in one); see ``converters/plugins.py``."""
        if op_type in self._handlers and op_type not in self.plugins:
            self._replaced[op_type] = self._handlers[op_type]
        self._handlers[op_type] = fn
        self.plugins[op_type] = origin

    def remove_plugin(self, op_type: str) -> None:
        """Drop the user's handler for ``op_type``, restoring the built-in one if it replaced one."""
        if op_type not in self.plugins:
            return
        del self.plugins[op_type]
        if op_type in self._replaced:
            self._handlers[op_type] = self._replaced.pop(op_type)
        else:
            del self._handlers[op_type]

    def alias(self, op_type: str, existing: str) -> None:
        """One-line table entry: ``op_type`` is handled like ``existing``."""
        self._handlers[op_type] = self._handlers[existing]

    def __contains__(self, op_type: str) -> bool:
        return op_type in self._handlers or op_type in self.ignored

    def get(self, op_type: str) -> Handler:
        return self._handlers[op_type]

    @property
    def supported(self) -> list[str]:
        return sorted(self._handlers)

    def check_supported(self, layers: Iterable[tuple[str, str]], *, path: str | None = None) -> None:
        """Raise one UnsupportedOpError for every (name, type) whose type has no handler."""
        missing: dict[str, list[str]] = {}
        for name, op_type in layers:
            if op_type not in self:
                missing.setdefault(op_type, []).append(name)
        if missing:
            raise UnsupportedOpError(missing, framework=self.framework, path=path)

    def call(self, op_type: str, layer_name: str, *args: Any, path: str | None = None, **kwargs: Any) -> Any:
        """Run the handler for ``op_type``; any failure is re-raised located at the layer."""
        if op_type in self.plugins:
            return self._call_plugin(op_type, layer_name, args, kwargs, path)
        try:
            return self._handlers[op_type](*args, **kwargs)
        except ConversionError as exc:
            raise exc.located(framework=self.framework, layer=layer_name, layer_type=op_type, path=path) from None
        except PortanetError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, AssertionError, ArithmeticError) as exc:
            raise ConversionError(
                f"{type(exc).__name__}: {exc}",
                framework=self.framework,
                layer=layer_name,
                layer_type=op_type,
                path=path,
            ) from exc

    def _call_plugin(self, op_type: str, layer_name: str, args: tuple, kwargs: dict, path: str | None) -> Any:
        """A plugin handler: any failure is the plugin's, reported with its origin in one line."""
        origin = self.plugins[op_type]
        try:
            return self._handlers[op_type](*args, **kwargs)
        except ConversionError as exc:
            exc.detail = f"plugin {origin}: {exc.detail}"
            raise exc.located(framework=self.framework, layer=layer_name, layer_type=op_type, path=path) from None
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported in one line
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConversionError(
                f"plugin {origin} failed: {type(exc).__name__}: {text}".rstrip(": "),
                framework=self.framework,
                layer=layer_name,
                layer_type=op_type,
                path=path,
            ) from exc
