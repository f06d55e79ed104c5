"""nn.Module / ExportedProgram -> IR through ``torch.onnx.export(..., dynamo=True)``.

The dynamo exporter records, on every ONNX node, the module path stack it was traced in
(``pkg.torch.onnx.name_scopes``, e.g. ``['', 'features', 'features.3', 'features.3.conv', 'conv2d']``)
and the matching classes (``pkg.torch.onnx.class_hierarchy``). The innermost module path
becomes the node's ``portanet.source`` and its class the ``portanet.source_type``, so parity
tools can compare IR values with forward-hook outputs keyed by module path. Nodes traced in
the root module's own ``forward`` (``torch.flatten(x, 1)`` and the like) get the FX node name and
the aten op instead, since no submodule produced them.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet._deps import require
from portanet.converters.pytorch.rnn import symbolic_rnn
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidInputError, UnsupportedOpError
from portanet.ir.builder import BATCH, CANONICAL_OPSET, TIME
from portanet.ir.frozen import mark_frozen
from portanet.ir.io import convert_opset
from portanet.ir.metadata import set_model_metadata
from portanet.ir.provenance import SOURCE_KEY, SOURCE_TYPE_KEY

log = logging.getLogger(__name__)

FRAMEWORK = "pytorch"
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
#: the exporter's marker for nodes traced outside any module (shape arithmetic on inputs)
_NO_MODULE = "_empty_nn_module_stack"
#: batch used for tracing when the batch dimension is dynamic: torch.export specializes size-1 dims
_TRACE_BATCH = 2


# ------------------------------------------------------------------------------ example inputs
def _to_tensor(x: Any, where: str) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray | np.generic):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise InvalidInputError(f"{where}: example inputs must be tensors or numpy arrays, received {type(x).__name__}")


def _forward_params(module: Any) -> list[str]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _schema_params(module: Any) -> list[str]:
    # a ScriptModule's forward has a TorchScript schema instead of a Python signature
    try:
        return [a.name for a in module.forward.schema.arguments[1:]]
    except (AttributeError, RuntimeError):
        return []


def example_inputs_for(module: Any, options: ConvertOptions, *, where: str) -> tuple[Any, ...]:
    """The positional example inputs: ``options.example_inputs`` or random tensors of ``--input-shape``."""
    import torch

    ex = options.example_inputs
    if ex is not None:
        items = list(ex) if isinstance(ex, list | tuple) else [ex]
        return tuple(_to_tensor(x, where) for x in items)
    shapes = options.input_shapes
    if not shapes:
        raise InvalidInputError(
            f"{where}: PyTorch models need an example input: pass example_inputs=... (Python) "
            "or --input-shape 1x3x224x224 (command line)"
        )
    if "" in shapes:
        if len(shapes) != 1:
            raise InvalidInputError(f"{where}: give either one unnamed --input-shape or named ones, not both")
        ordered = [shapes[""]]
    else:
        params = (_forward_params(module) or _schema_params(module)) if module is not None else []
        unknown = [n for n in shapes if params and n not in params]
        if unknown:
            raise InvalidInputError(
                f"{where}: --input-shape names {', '.join(unknown)}, but forward() takes {', '.join(params)}"
            )
        ordered = [shapes[n] for n in (sorted(shapes, key=params.index) if params else shapes)]
    g = torch.Generator().manual_seed(0)
    out = []
    for dims in ordered:
        # symbolic dims ("N") become the tracing batch size
        concrete = [d if isinstance(d, int) else _TRACE_BATCH for d in dims]
        out.append(torch.randn(*concrete, generator=g))
    return tuple(out)


def _trace_args(args: tuple[Any, ...], axes: Sequence[dict[int, str] | None]) -> tuple[Any, ...]:
    """Repeat size-1 examples along dynamic axes to size 2 (torch.export would pin a 1)."""
    out = []
    for a, ax in zip(args, axes):
        for axis in sorted(ax or {}):
            if a.shape[axis] == 1:
                a = a.repeat_interleave(_TRACE_BATCH, dim=axis)
        out.append(a)
    return tuple(out)


def dynamic_axes(module: Any, args: tuple[Any, ...], options: ConvertOptions) -> list[dict[int, str]]:
    """Per positional input: axis -> symbolic dimension name.

    * the batch axis (``N``) when ``options.dynamic_batch``: axis 0, or axis 1 of the first
      input of a time-major recurrent model (``nn.LSTM/GRU/RNN`` with ``batch_first=False``)
      and of the rank-3 inputs after it (initial states);
    * the time axis (``T``) of the first input of a model holding recurrent layers, so one
      conversion serves every sequence length;
    * every other dimension ``--input-shape`` names with a symbol (``Nx28xT``)."""
    import torch

    rnns = []
    if isinstance(module, torch.nn.Module):
        # nn.LSTM / GRU / RNN, also as scripted submodules (which keep their original name)
        rnns = [bool(getattr(m, "batch_first", False)) for m in module.modules()
                if isinstance(m, torch.nn.RNNBase) or getattr(m, "original_name", None) in ("LSTM", "GRU", "RNN")]
    time_major = bool(rnns) and not all(rnns)
    axes: list[dict[int, str]] = []
    for i, a in enumerate(args):
        ax: dict[int, str] = {}
        if a.ndim >= 1 and options.dynamic_batch:
            # recurrent models: a time-major sequence and the (layers*dirs, N, H) states
            # carry the batch on axis 1
            state = i > 0 and bool(rnns) and a.ndim == 3
            ax[1 if (i == 0 and time_major and a.ndim >= 2) or state else 0] = BATCH
        if i == 0 and rnns and a.ndim >= 2:
            ax[0 if time_major else 1] = TIME
        axes.append(ax)
    shapes = options.input_shapes
    if shapes:
        params = _forward_params(module) or _schema_params(module)
        keyed = [shapes[""]] if "" in shapes else [shapes[n] for n in params if n in shapes]
        for ax, dims in zip(axes, keyed):
            for k, d in enumerate(dims):
                if isinstance(d, str) and k not in ax:
                    ax[k] = d
    return axes


# ------------------------------------------------------------------------------------ export
def _summary(exc: BaseException) -> str:
    """The most informative single line of a torch.onnx export error."""
    text = str(exc)
    m = re.search(r"## Exception summary\s*\n+(.+)", text)
    line = m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    return line[:500]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter warns about optional packages and deprecations; keep the user's log clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@contextlib.contextmanager
def _fresh_rnn_dispatch() -> Iterator[None]:
    """Forget the dispatch decisions cached on ``aten::lstm`` / ``aten::gru``, before and after
    an export.

    For a symbolic time axis torch's exporter swaps these ops' decomposition for a loop-based
    one during the export by assigning their Python kernels directly, which leaves the op's
    dispatch cache as it was: an entry cached by anything in between (an eager run, an earlier
    export) makes the next export use the per-step decomposition, which pins the time axis to
    the traced length (every conversion after the first in a process lost its symbolic T)."""
    import torch

    ops = [torch.ops.aten.lstm.input, torch.ops.aten.gru.input]

    def clear() -> None:
        for op in ops:
            cache = getattr(op, "_dispatch_cache", None)
            if isinstance(cache, dict):
                cache.clear()

    clear()
    try:
        yield
    finally:
        clear()


def export_to_ir(
    obj: Any,
    options: ConvertOptions,
    *,
    source_files: Sequence[Any] = (),
    where: str = "module",
) -> ir.Model:
    """Export an ``nn.Module`` or ``ExportedProgram`` to the IR at the canonical opset, with provenance.

    Modules are exported in eval mode (their previous mode is restored afterwards); the batch
    dimension of every input is symbolic (``N``) unless ``options.dynamic_batch`` is False.
    """
    torch = require("torch")
    dynamic = options.dynamic_batch
    kwargs: dict[str, Any] = {"dynamo": True, "optimize": False, "verbose": False}
    was_training: bool | None = None
    if isinstance(obj, torch.export.ExportedProgram):
        args: tuple[Any, ...] = ()
        module = obj
    elif isinstance(obj, torch.jit.ScriptModule):
        from portanet.converters.pytorch.torchscript import export_scripted

        return export_scripted(obj, options, source_files=source_files, where=where)
    elif isinstance(obj, torch.nn.Module):
        refused = unsupported_modules(obj)
        if refused:
            raise UnsupportedOpError(refused, framework=FRAMEWORK, path=where)
        example = example_inputs_for(obj, options, where=where)
        axes = dynamic_axes(obj, example, options)
        args = _trace_args(example, axes)
        module = obj
        was_training = obj.training
        obj.eval()
        if any(axes):
            dims: dict[str, Any] = {}
            kwargs["dynamic_shapes"] = tuple(
                {k: dims.setdefault(name, torch.export.Dim(name)) for k, name in ax.items()} or None for ax in axes
            )
    else:
        raise InvalidInputError(f"{where}: expected an nn.Module or ExportedProgram, received {type(obj).__name__}")
    try:
        # nn.RNN as ONNX RNN nodes (symbolic time axis) instead of torch's per-step unrolling
        with _quiet(), _fresh_rnn_dispatch(), symbolic_rnn(module) as table:
            if table:
                kwargs["custom_translation_table"] = table
            try:
                program = torch.onnx.export(module, args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the exporter raises its own hierarchy
                # the exporter stops at the first op it cannot translate: list them all in one error
                unsupported = _scan_unsupported(module, args, kwargs.get("dynamic_shapes"))
                if unsupported:
                    raise UnsupportedOpError(unsupported, framework=FRAMEWORK, path=where) from exc
                raise ConversionError(f"torch.onnx export failed: {_summary(exc)}", framework=FRAMEWORK,
                                      path=where) from exc
    finally:
        if was_training:
            obj.train()
    model = program.model
    map_provenance(model)
    _fold_constants(model, where)
    model = finish_model(model, options, source_files=source_files, where=where, pin_shapes=args == ())
    if dynamic and isinstance(obj, torch.export.ExportedProgram):
        _warn_static_batch(model, where)
    _mark_frozen_parameters(model, obj)
    return model


def _mark_frozen_parameters(model: ir.Model, obj: Any) -> None:
    """Parameters with ``requires_grad=False`` (initializers keep the state-dict names)."""
    import torch

    if isinstance(obj, torch.export.ExportedProgram):
        named = obj.state_dict.items()
    else:
        named = obj.named_parameters()
    inits = model.graph.initializers
    for name, p in named:
        if isinstance(p, torch.nn.Parameter) and not p.requires_grad and name in inits:
            mark_frozen(inits[name], "pytorch requires_grad=False")


def finish_model(model: ir.Model, options: ConvertOptions, *, source_files: Sequence[Any], where: str,
                 pin_shapes: bool) -> ir.Model:
    """Common tail of every PyTorch export: canonical opset, producer, input shapes, the
    batch dimension named ``N``, metadata."""
    proto = ir.serde.serialize_model(model)
    proto = convert_opset(proto, CANONICAL_OPSET, where=where)
    model = ir.serde.deserialize_model(proto)
    from portanet import __version__

    model.producer_name, model.producer_version = "portanet", __version__
    if pin_shapes and options.input_shapes:
        _pin_input_shapes(model, options.input_shapes, options.dynamic_batch, where)
    if options.dynamic_batch:
        named = {d for dims in options.input_shapes.values() for d in dims[1:] if isinstance(d, str)}
        _rename_batch_dims(model, keep={TIME} | named)
    set_model_metadata(model, framework=FRAMEWORK, source_files=source_files, options=options.as_metadata())
    return model


def _fold_constants(model: ir.Model, where: str) -> None:
    """Fold the exporter's shape arithmetic (Shape/Expand/CastLike chains around BatchNorm and
    Reshape) into constants. Only constant folding: no fusions, so BatchNorm stays a layer of
    its own (the model remains trainable and every module keeps its nodes)."""
    try:
        from onnx_ir.passes.common import RemoveUnusedNodesPass
        from onnxscript.optimizer import fold_constants
    except ImportError:  # the exporter itself needs onnxscript; keep the unfolded graph otherwise
        return
    try:
        fold_constants(model)
        RemoveUnusedNodesPass()(model)
    except Exception as exc:  # noqa: BLE001 - folding is a nicety, the unfolded graph is correct
        log.debug("%s: constant folding skipped (%s)", where, exc)


def unsupported_modules(module: Any) -> dict[str, list[str]]:
    """Module variants torch's exporter translates wrongly or not at all, by kind -> paths:
    ``nn.LSTM(proj_size>0)`` (the exporter's LSTM drops the projection and writes an
    invalid model)."""
    import torch

    found: dict[str, list[str]] = {}
    for path, m in module.named_modules():
        if isinstance(m, torch.nn.LSTM) and m.proj_size > 0:
            found.setdefault("LSTM(proj_size>0)", []).append(path or type(module).__name__)
    return found


def _scan_unsupported(module: Any, args: tuple[Any, ...], dynamic_shapes: Any) -> dict[str, list[str]]:
    """aten/prims op -> module paths using it, for every op torch's ONNX registry cannot
    translate after its decompositions (empty if the model does not even trace, or if this
    torch build lacks the exporter internals used here)."""
    import torch

    try:
        from torch.onnx._internal.exporter import _fx_passes, _registration
    except ImportError:
        return {}
    try:
        with _quiet():
            program = module if isinstance(module, torch.export.ExportedProgram) else torch.export.export(
                module, args, dynamic_shapes=dynamic_shapes)
            registry = _registration.ONNXRegistry.from_torchlib(CANONICAL_OPSET)
            program = _fx_passes.decompose_with_registry(program, registry)
    except Exception as exc:  # noqa: BLE001 - the scan is best effort; the export error stands
        log.debug("unsupported-op scan skipped: %s", exc)
        return {}
    found: dict[str, list[str]] = {}
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if registry.is_registered(target) or target.namespace == "portanet":  # ours: see rnn.py
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        found.setdefault(str(target), []).append(path or node.name)
    return found


# -------------------------------------------------------------------------------- provenance
def _literal_list(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _short_class(qualname: str) -> str:
    return qualname.rsplit(".", 1)[-1]


def source_from_scopes(scopes: list[str], classes: list[str]) -> tuple[str, str] | None:
    """(module path, module class) of the innermost module, or (FX node name, aten op) for ops
    traced in the root module or outside any module; None without metadata."""
    if not scopes:
        return None
    # the last entry is the FX node (the aten call); the ones before it are module paths
    modules = [(s, c) for s, c in zip(scopes[:-1], classes[:-1]) if s and not s.startswith(_NO_MODULE)]
    if modules:
        path, cls = modules[-1]
        return path, _short_class(cls)
    op = classes[-1] if len(classes) == len(scopes) else ""
    return scopes[-1], op


def map_provenance(model: ir.Model) -> None:
    """Turn the exporter's scope metadata into portanet provenance and drop torch's keys
    (their stack traces hold local file paths)."""
    for i, node in enumerate(model.graph.all_nodes()):
        props = node.metadata_props
        src = source_from_scopes(_literal_list(props.get(_SCOPES_KEY)), _literal_list(props.get(_CLASSES_KEY)))
        for key in [k for k in props if k.startswith("pkg.torch.") or k == "namespace"]:
            del props[key]
        if not node.name:
            node.name = f"{node.op_type}_{i}"
        if src is None:
            src = (node.name, node.op_type)
        props[SOURCE_KEY], props[SOURCE_TYPE_KEY] = src


def _pin_input_shapes(model: ir.Model, shapes: dict[str, list[int | str]], dynamic: bool, where: str) -> None:
    """Give an exported program's free input dims the sizes of ``--input-shape`` (TorchScript
    conversions leave every dim free); the batch stays symbolic when ``dynamic``. Dims the
    program fixed must agree."""
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    for key, dims in shapes.items():
        if key == "" and len(inputs) == 1:
            value = inputs[0]
        else:
            value = next((v for v in inputs if v.name == key), None)
        if value is None or value.shape is None:
            raise InvalidInputError(
                f"{where}: --input-shape {key or '(unnamed)'}: inputs are {', '.join(str(v.name) for v in inputs)}"
            )
        if len(value.shape) != len(dims):
            raise InvalidInputError(f"{where}: input '{value.name}' has rank {len(value.shape)}, "
                                    f"--input-shape gives {len(dims)} dims")
        new: list[Any] = []
        for i, (have, want) in enumerate(zip(value.shape, dims)):
            if isinstance(have, int):
                if isinstance(want, int) and want != have and not (i == 0 and dynamic):
                    raise InvalidInputError(f"{where}: input '{value.name}' has dimension {i} fixed at {have} "
                                            f"in the program, --input-shape gives {want}")
                new.append(have)
            elif i == 0 and dynamic:
                new.append(have)
            else:
                new.append(want if isinstance(want, int) else have)
        value.shape = ir.Shape(new)


def _warn_static_batch(model: ir.Model, where: str) -> None:
    """An ExportedProgram traced without ``dynamic_shapes`` bakes its example's batch size:
    say so once, with the fix, instead of failing later at another batch size."""
    fixed = [(v.name, v.shape[0]) for v in model.graph.inputs
             if not v.is_initializer() and v.shape is not None and len(v.shape) and isinstance(v.shape[0], int)]
    if not fixed:
        return
    names = ", ".join(f"'{n}' at {d}" for n, d in fixed)
    log.warning(
        "%s: the exported program fixes the batch dimension of input %s, so the converted model takes only that "
        "batch size; re-export with a dynamic batch: torch.export.export(model, (x,), "
        "dynamic_shapes=({0: torch.export.Dim('batch')},))", where, names,
    )


def _rename_batch_dims(model: ir.Model, keep: set[str]) -> None:
    """Name the inputs' symbolic batch dimension ``N`` everywhere (torch calls it s0, s31, ...)."""
    names = set()
    for v in model.graph.inputs:
        if v.shape is not None and len(v.shape) and not isinstance(v.shape[0], int):
            sym = getattr(v.shape[0], "value", None)
            # names given on purpose (the time axis, --input-shape symbols) stay
            if sym and sym != BATCH and sym not in keep:
                names.add(sym)
    if not names:
        return

    def fix(v: ir.Value | None) -> None:
        if v is None or v.shape is None:
            return
        dims = list(v.shape)
        if any(not isinstance(d, int) and getattr(d, "value", None) in names for d in dims):
            v.shape = ir.Shape(
                [ir.SymbolicDim(BATCH) if not isinstance(d, int) and getattr(d, "value", None) in names else d
                 for d in dims]
            )

    for v in model.graph.inputs:
        fix(v)
    for v in model.graph.outputs:
        fix(v)
    for node in model.graph.all_nodes():
        for v in node.outputs:
            fix(v)
