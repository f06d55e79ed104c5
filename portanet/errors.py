"""The PortanetError hierarchy.

Every error a user can cause (bad file, unsupported layer, impossible shape) is a
``PortanetError``; the CLI turns it into a one-line message and exit status 2. Anything
else is a bug in portanet and exits with status 1.
"""

from __future__ import annotations


class PortanetError(Exception):
    """Base class of every error portanet raises on purpose."""

    #: exit status of the CLI when this error ends a command
    exit_code: int = 2


class ConversionError(PortanetError):
    """A source model could not be converted.

    ``framework``, ``layer``, ``layer_type`` and ``path`` locate the problem; the message
    renders them as ``<path>: <framework> layer '<layer>' (<type>): <detail>``.
    """

    def __init__(
        self,
        detail: str,
        *,
        framework: str | None = None,
        layer: str | None = None,
        layer_type: str | None = None,
        path: str | None = None,
    ) -> None:
        self.detail = detail
        self.framework = framework
        self.layer = layer
        self.layer_type = layer_type
        self.path = str(path) if path is not None else None
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.path:
            where.append(f"{self.path}:")
        if self.layer is not None:
            fw = f"{self.framework} " if self.framework else ""
            typ = f" ({self.layer_type})" if self.layer_type else ""
            where.append(f"{fw}layer '{self.layer}'{typ}:")
        elif self.framework and not self.path:
            where.append(f"{self.framework}:")
        return " ".join([*where, self.detail])

    def located(
        self,
        *,
        framework: str | None = None,
        layer: str | None = None,
        layer_type: str | None = None,
        path: str | None = None,
    ) -> ConversionError:
        """Fill in location fields that are still unknown and re-render the message."""
        self.framework = self.framework or framework
        self.layer = self.layer if self.layer is not None else layer
        self.layer_type = self.layer_type or layer_type
        self.path = self.path or (str(path) if path is not None else None)
        self.args = (self._render(),)
        return self


class UnsupportedOpError(ConversionError, NotImplementedError):
    """The source uses layer/op types portanet cannot convert.

    ``unsupported`` maps each unsupported type to the names of the layers using it; the
    message lists every type with its count, so a user sees the whole problem at once.
    """

    def __init__(
        self,
        unsupported: dict[str, list[str]],
        *,
        framework: str | None = None,
        path: str | None = None,
    ) -> None:
        self.unsupported = {k: list(v) for k, v in unsupported.items()}
        parts = []
        for op_type, layers in sorted(self.unsupported.items()):
            shown = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
            parts.append(f"{op_type} x{len(layers)} ({shown})")
        total = sum(len(v) for v in self.unsupported.values())
        detail = f"{total} unsupported layer(s) of {len(parts)} type(s): " + "; ".join(parts)
        super().__init__(detail, framework=framework, path=path)


class InvalidModelError(PortanetError, ValueError):
    """A file is not a valid model (wrong format, truncated, inconsistent)."""


class InvalidInputError(PortanetError, ValueError):
    """A user-supplied argument or data set is unusable (bad shape string, missing data file)."""


class RuntimeBackendError(PortanetError):
    """A runtime backend cannot run the model (missing provider, missing package, bad feed)."""


class MissingDependencyError(PortanetError, ImportError):
    """An optional framework is not installed; the message names the pip extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed; run: pip install 'portanet[{extra}]'")


class ParityError(PortanetError):
    """A converted model's outputs differ from the source framework beyond tolerance."""

    exit_code = 3
