"""TensorFlow graphs that are not Keras models (SavedModel folders, ``tf.function``) through
tf2onnx's ``from_function`` and the ONNX importer.

tf2onnx keeps TensorFlow's NHWC interface; ``--nchw`` asks it to transpose rank-4 inputs
and outputs (its ``inputs_as_nchw``/``outputs_as_nchw``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from portanet._deps import require
from portanet.converters.registry import ConvertOptions
from portanet.errors import ConversionError, InvalidModelError
from portanet.ir.builder import BATCH, CANONICAL_OPSET, IR_VERSION

log = logging.getLogger(__name__)

FRAMEWORK = "tensorflow"


def input_signature_of(fn: Any, options: ConvertOptions) -> list[Any]:
    """The TensorSpecs of ``fn``: its own input_signature, else specs made from
    ``options.example_inputs`` (batch dimension left symbolic)."""
    tf = require("tensorflow")
    sig = getattr(fn, "input_signature", None)
    if sig:
        return list(sig)
    examples = options.example_inputs
    if examples is None:
        raise ConversionError("a tf.function without input_signature needs example_inputs=... "
                              "(arrays or tf.TensorSpec)", framework=FRAMEWORK)
    if not isinstance(examples, list | tuple):
        examples = [examples]
    specs = []
    for i, e in enumerate(examples):
        if isinstance(e, tf.TensorSpec):
            specs.append(e)
        else:
            a = np.asarray(e)
            specs.append(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype), name=f"input_{i}"))
    return specs


def keras_call_function(model: Any) -> Any:
    """A ``tf.function`` running a (subclassed) Keras model in inference mode on positional inputs."""
    tf = require("tensorflow")

    @tf.function
    def call(*inputs: Any) -> Any:
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    return call


def signature_function(loaded: Any, path: Path) -> tuple[Any, list[Any], list[str]]:
    """A tf.function wrapping the SavedModel's serving signature, with positional TensorSpecs."""
    tf = require("tensorflow")
    sigs = getattr(loaded, "signatures", {}) or {}
    if not sigs:
        raise InvalidModelError(f"{path}: SavedModel has no signatures to convert")
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    concrete = sigs[key]
    kw_specs = concrete.structured_input_signature[1]
    names = sorted(kw_specs)
    specs = [tf.TensorSpec(kw_specs[n].shape, kw_specs[n].dtype, name=n) for n in names]

    @tf.function(input_signature=specs)
    def serve(*args: Any) -> Any:
        return concrete(**dict(zip(names, args)))

    return serve, specs, names


def _rank4_names(specs: list[Any]) -> list[str]:
    return [f"{s.name}:0" for s in specs if s.shape.rank == 4]


def _to_ir(proto: Any, options: ConvertOptions, source_files: list[Any]) -> ir.Model:
    from portanet.converters.onnx.importer import add_self_provenance
    from portanet.ir.io import convert_opset, model_opset
    from portanet.ir.metadata import set_model_metadata

    if model_opset(proto) != CANONICAL_OPSET:
        proto = convert_opset(proto, CANONICAL_OPSET, where="tf2onnx output")
    model = ir.serde.deserialize_model(proto)
    model.ir_version = max(model.ir_version or 0, IR_VERSION)
    _name_batch_dims(model)
    _clean_names(model)
    add_self_provenance(model)
    set_model_metadata(model, framework=FRAMEWORK, source_files=source_files, options=options.as_metadata())
    return model


def _name_batch_dims(model: ir.Model) -> None:
    """tf2onnx names unknown dims ``unk__<n>``; the leading one of each graph input/output is
    the batch dimension, which portanet calls ``N``."""
    for v in [*model.graph.inputs, *model.graph.outputs]:
        if v.shape is None or len(v.shape) == 0:
            continue
        d = v.shape[0]
        if not isinstance(d, int) and str(getattr(d, "value", "") or "").startswith("unk__"):
            v.shape = ir.Shape([ir.SymbolicDim(BATCH), *list(v.shape)[1:]])


def _clean_names(model: ir.Model) -> None:
    """Graph inputs/outputs still named after TensorFlow tensors (``x:0``, ``Identity:0``: a
    function returning a tuple has no structured names) become ``x`` and ``output_<i>``."""
    taken = {v.name for v in [*model.graph.inputs, *model.graph.outputs]}
    for v in model.graph.inputs:
        if v.name and v.name.endswith(":0") and v.name[:-2] not in taken:
            v.name = v.name[:-2]
    for i, v in enumerate(model.graph.outputs):
        if v.name and ":" in v.name and f"output_{i}" not in taken:
            v.name = f"output_{i}"


def convert_function(fn: Any, options: ConvertOptions, *, source_files: list[Any] | None = None) -> ir.Model:
    """Convert a ``tf.function`` through tf2onnx (``from_function``)."""
    tf2onnx = require("tf2onnx")
    specs = input_signature_of(fn, options)
    kwargs: dict[str, Any] = {}
    if options.nchw:
        names = _rank4_names(specs)
        kwargs = {"inputs_as_nchw": names} if names else {}
    try:
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=specs, opset=CANONICAL_OPSET, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything
        # TensorFlow puts the actual message on the last line ("in user code: ... ValueError: ...")
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ConversionError(f"tf2onnx failed: {type(exc).__name__}: {lines[-1] if lines else ''}",
                              framework=FRAMEWORK) from exc
    if options.nchw:
        _outputs_to_nchw(proto)
    return _to_ir(proto, options, source_files or [])


def _outputs_to_nchw(proto: Any) -> None:
    """Append a Transpose NHWC -> NCHW to every rank-4 graph output (keeping its name)."""
    import onnx

    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        inner = out.name + "__nhwc"
        for node in proto.graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        proto.graph.node.append(onnx.helper.make_node("Transpose", [inner], [out.name], perm=[0, 3, 1, 2],
                                                      name=out.name + "__to_nchw"))
        old = [d.dim_param or d.dim_value for d in dims]
        new = [old[0], old[3], old[1], old[2]]
        for d, v in zip(dims, new):
            if isinstance(v, str):
                d.dim_param = v
            else:
                d.dim_value = v


def convert_saved_model(path: Path, options: ConvertOptions) -> ir.Model:
    """Convert a SavedModel folder's serving signature through tf2onnx."""
    tf = require("tensorflow")
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        # SavedModels written by older TensorFlow can fail in TF2's object loader (e.g.
        # "'_UserObject' object has no attribute 'add_slot'"); their serving graph still loads
        # through the v1 loader
        log.info("tf.saved_model.load failed on %s (%s: %s); trying the v1 loader", path, type(exc).__name__,
                 str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        return convert_saved_model_v1(path, options, cause=exc)
    fn, _specs, _names = signature_function(loaded, path)
    model = convert_function(fn, options, source_files=[path])
    return model


def convert_saved_model_v1(path: Path, options: ConvertOptions, *, cause: BaseException | None = None) -> ir.Model:
    """Convert a SavedModel's serving signature through the TensorFlow 1 loader: the
    signature's graph is loaded into a ``tf.compat.v1.Session``, its variables frozen to
    constants, and the GraphDef converted with tf2onnx. Inputs and outputs take the
    signature's keys as names."""
    tf = require("tensorflow")
    tf2onnx = require("tf2onnx")
    v1 = tf.compat.v1
    try:
        with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
            meta = v1.saved_model.loader.load(sess, [v1.saved_model.tag_constants.SERVING], str(path))
            sigs = dict(meta.signature_def)
            if not sigs:
                raise InvalidModelError(f"{path}: SavedModel has no signatures to convert")
            key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
            sig = sigs[key]
            ins = {k: sig.inputs[k].name for k in sorted(sig.inputs)}
            outs = {k: sig.outputs[k].name for k in sorted(sig.outputs)}
            frozen = v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), [t.split(":")[0] for t in outs.values()])
    except InvalidModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises many types for bad folders
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        why = f"; TensorFlow 2's loader: {str(cause).strip().splitlines()[0]}" if cause and str(cause).strip() else ""
        raise InvalidModelError(f"{path}: TensorFlow cannot load the SavedModel ({first}{why})") from exc
    kwargs: dict[str, Any] = {}
    if options.nchw:
        shapes = {t.name: t for t in sig.inputs.values()}
        rank4 = [name for name, info in shapes.items() if len(info.tensor_shape.dim) == 4]
        kwargs = {"inputs_as_nchw": rank4} if rank4 else {}
    try:
        proto, _ = tf2onnx.convert.from_graph_def(frozen, input_names=list(ins.values()),
                                                  output_names=list(outs.values()), opset=CANONICAL_OPSET, **kwargs)
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise ConversionError(f"tf2onnx failed: {type(exc).__name__}: {lines[-1] if lines else ''}",
                              framework=FRAMEWORK, path=str(path)) from exc
    if options.nchw:
        _outputs_to_nchw(proto)
    _rename_interface(proto, {v: k for k, v in {**ins, **outs}.items()})
    return _to_ir(proto, options, [path])


def _rename_interface(proto: Any, names: dict[str, str]) -> None:
    """Rename graph inputs/outputs (TensorFlow tensor names -> signature keys) everywhere."""
    for vi in [*proto.graph.input, *proto.graph.output]:
        if vi.name in names:
            old, new = vi.name, names[vi.name]
            for node in proto.graph.node:
                node.input[:] = [new if i == old else i for i in node.input]
                node.output[:] = [new if o == old else o for o in node.output]
            vi.name = new
