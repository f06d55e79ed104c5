"""portanet: move trained neural networks between frameworks and run them anywhere.

Public API::

    import portanet
    model = portanet.convert("deploy.prototxt", "net.caffemodel")   # or an nn.Module / keras.Model
    model = portanet.optimize(model, level=2)
    portanet.save(model, "net.onnx", opset=17)
    out = portanet.Session(model, backend="ort").run({"data": x})
    report = portanet.verify(["deploy.prototxt", "net.caffemodel"])
    portanet.Trainer(model, ...).fit(...)
    portanet.export(model, to="pytorch", path="net.py")
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir

__all__ = ["__version__", "load", "save", "convert", "optimize", "export", "Session", "Trainer", "verify",
           "register_layer"]


def load(path: str | os.PathLike[str], *, upgrade: bool = True) -> ir.Model:
    """Load an ONNX file as portanet IR (upgraded to the canonical opset 18)."""
    from portanet.ir.io import load_onnx

    return load_onnx(path, upgrade=upgrade)


def save(model: ir.Model, path: str | os.PathLike[str], *, opset: int | None = None) -> None:
    """Save IR as ONNX atomically, converting to ``opset`` (13-21) if given."""
    from portanet.ir.io import save_onnx

    save_onnx(model, path, opset=opset)


def convert(*sources: Any, framework: str | None = None, **options: Any) -> ir.Model:
    """Convert a source model to IR.

    ``sources`` are file paths (``"deploy.prototxt", "net.caffemodel"``, ``"m-symbol.json"``,
    ``"m.keras"``, ``"m.pt2"``, ``"m.cmf"``, ``"m.onnx"``) or one in-memory model
    (``torch.nn.Module`` with ``example_inputs=...``, ``keras.Model``, ``tf.function``).
    Keyword options are the fields of ``portanet.converters.ConvertOptions``.
    """
    from portanet.converters.registry import ConvertOptions, convert_object, convert_paths

    known = set(ConvertOptions.__dataclass_fields__)
    extra = {k: v for k, v in options.items() if k not in known}
    opts = ConvertOptions(**{k: v for k, v in options.items() if k in known})
    opts.extra.update(extra)
    if len(sources) == 1 and not isinstance(sources[0], str | os.PathLike | list | tuple):
        return convert_object(sources[0], opts)
    paths: list[Any] = []
    for s in sources:
        paths.extend(s if isinstance(s, list | tuple) else [s])
    return convert_paths(paths, opts, framework=framework)


def optimize(model: ir.Model, level: int = 2, **kwargs: Any) -> ir.Model:
    """Run the optimizer pipeline at ``level`` (0, 1 = trainable clean-up, 2 = inference)."""
    from portanet.optimizer import optimize as _optimize

    return _optimize(model, level=level, **kwargs)


def register_layer(framework: str, *layer_types: str) -> Any:
    """Decorator registering a user's handler for source layers of ``layer_types`` in the
    ``framework`` importer ("caffe", "mxnet", "keras", "cntk", "onnx"); it replaces a built-in
    handler of the same type. See ``portanet.converters.plugins`` and the README."""
    from portanet.converters.plugins import register_layer as _register

    return _register(framework, *layer_types)


def verify(*sources: Any, **kwargs: Any) -> Any:
    """Convert (or take ``onnx=``) and compare against the source framework; returns a report."""
    from portanet.parity import verify as _verify

    return _verify(*sources, **kwargs)


def export(model: Any, *, to: str, path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Export ``model`` (IR, source paths or a framework model) to ``to`` (pytorch, torchscript,
    pt2, keras, savedmodel, tflite) at ``path``, verified against ONNX Runtime by default."""
    from portanet.export import export as _export

    return _export(model, to=to, path=path, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Session":
        from portanet.runtime.session import Session

        return Session
    if name == "Trainer":
        from portanet.runtime.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'portanet' has no attribute {name!r}")
