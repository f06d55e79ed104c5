"""Loading and saving ONNX files: opset conversion, external data, atomic writes.

* ``load_onnx`` accepts opsets 7-21 and upgrades to the canonical opset 18 (``upgrade=False``
  keeps the file's opset). External-data locations must stay inside the model's folder.
* ``save_onnx`` writes to a temporary file in the destination folder and renames it into
  place, so an interrupted save never leaves a half-written file. ``opset`` (13-21) converts
  through onnx's version converter; where onnx has no down-conversion adapter for an op
  whose signature did not change between the two versions (only types were added), the
  node is relabelled, and ops with real changes go through the converter one node at a time.
* Saved files carry no ``value_info`` for intermediate values: the shapes ONNX inference
  wrote there name the symbolic batch (``N``), and a consumer that fixes the input's batch
  (tract, OpenVINO's reshape) then finds ``N`` and ``1`` for the same tensor and refuses the
  file. Graph inputs and outputs keep their declared shapes; every consumer re-infers the rest.
* ``portanet.ir.portable`` rewrites what some consumers read differently (average pooling
  that counts its padding becomes an explicit ``Pad`` and a pool).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from portanet.errors import InvalidInputError, InvalidModelError
from portanet.ir.builder import CANONICAL_OPSET, IR_VERSION
from portanet.ir.portable import make_portable
from portanet.ir.writer import serialize_head
from portanet.ir.writer import write as write_streamed

log = logging.getLogger(__name__)

MIN_LOAD_OPSET = 7
MAX_OPSET = 21
MIN_SAVE_OPSET = 13
#: above this many initializer bytes, tensors go to an external-data file
EXTERNAL_THRESHOLD = 1_800_000_000


def model_opset(model: ir.Model | onnx.ModelProto) -> int:
    if isinstance(model, onnx.ModelProto):
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return o.version
        return 1
    return model.opset_imports.get("", 1)


def _check_external_locations(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations that are absolute or escape the model's folder."""
    base = path.resolve().parent

    def tensors():
        yield from proto.graph.initializer
        for node in proto.graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t

    for t in tensors():
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), None)
        if loc is None:
            raise InvalidModelError(f"{path}: tensor '{t.name}' has external data without a location")
        if os.path.isabs(loc) or not (base / loc).resolve().is_relative_to(base):
            raise InvalidModelError(
                f"{path}: tensor '{t.name}' points its external data outside the model's folder ('{loc}'); refused"
            )
        if not (base / loc).is_file():
            raise InvalidModelError(f"{path}: external data file '{loc}' of tensor '{t.name}' is missing")


def read_onnx_proto(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read and validate an ONNX file without loading external tensor data."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file")
    if p.is_dir():
        raise InvalidInputError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise InvalidModelError(f"{p}: empty file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise InvalidModelError(f"{p}: not a valid ONNX file ({type(exc).__name__}: {exc})") from exc
    if not proto.graph.node and not proto.graph.output:
        raise InvalidModelError(f"{p}: not a valid ONNX file (no graph)")
    from portanet.ir.onnx_check import check_strings, checker_view, repair_interface, validate_proto

    check_strings(proto, p)  # first: protobuf hands non-UTF-8 strings over as bytes
    repaired = repair_interface(proto)  # -1 dims, outputs without shapes: what ONNX Runtime accepts
    _check_external_locations(proto, p)
    opset = model_opset(proto)
    if not MIN_LOAD_OPSET <= opset <= MAX_OPSET:
        raise InvalidModelError(f"{p}: opset {opset} is outside the supported range {MIN_LOAD_OPSET}-{MAX_OPSET}")
    view = checker_view(proto)
    try:
        # the file itself unless repaired (the path form also checks protobufs beyond 2 GB)
        onnx.checker.check_model(view if view is not None else proto if repaired else str(p))
    except (onnx.checker.ValidationError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
        raise InvalidModelError(f"{p}: ONNX checker rejected the model: {first}") from exc
    validate_proto(proto, p)
    return proto


def load_onnx(path: str | os.PathLike[str], *, upgrade: bool = True) -> ir.Model:
    """Load an ONNX file as IR; upgrade to the canonical opset unless ``upgrade=False``."""
    p = Path(path)
    proto = read_onnx_proto(p)
    if upgrade and model_opset(proto) != CANONICAL_OPSET:
        proto = convert_opset(proto, CANONICAL_OPSET, where=str(p))
    try:
        model = ir.serde.deserialize_model(proto)
    except ir.serde.SerdeError as exc:
        raise InvalidModelError(f"{p}: not a valid ONNX model ({_root_cause(exc)})") from exc
    ir.external_data.set_base_dir(model.graph, p.resolve().parent)
    return model


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause of a wrapped error (onnx_ir nests them per level)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def convert_opset(proto: onnx.ModelProto, target: int, *, where: str = "model") -> onnx.ModelProto:
    """Convert ``proto`` (default domain) to opset ``target``."""
    source = model_opset(proto)
    if source == target:
        return proto
    if target < source:
        # onnx's down adapters are missing for most 13-21 changes or keep attributes the
        # older schema lacks: portanet's own node-by-node conversion, checked afterwards
        out = _convert_nodewise(proto, source, target, where)
    else:
        try:
            out = onnx.version_converter.convert_version(proto, target)
            if source >= MIN_SAVE_OPSET:  # the node-by-node fallback covers 13-21 only
                onnx.checker.check_model(out)
        except Exception as exc:  # noqa: BLE001 - onnx raises RuntimeError/IndexError/ValidationError/...
            log.debug("whole-model version conversion failed (%s); converting node by node", exc)
            out = _convert_nodewise(proto, source, target, where)
    _restore_node_metadata(proto, out)
    out.ir_version = max(out.ir_version, 7 if target < 15 else 8)
    if any(n.metadata_props for n in out.graph.node):
        out.ir_version = max(out.ir_version, IR_VERSION)
    return out


def _restore_node_metadata(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """onnx's version converter drops node metadata_props (our provenance): copy it back by
    node name, or by first output name for nodes an adapter re-created."""
    by_name = {n.name: n.metadata_props for n in before.graph.node if n.name and n.metadata_props}
    by_output = {o: n.metadata_props for n in before.graph.node if n.metadata_props for o in n.output}
    for node in after.graph.node:
        if node.metadata_props:
            continue
        props = by_name.get(node.name) or next((by_output[o] for o in node.output if o in by_output), None)
        if props:
            node.metadata_props.extend(props)


def _formal_name(params, i: int) -> str | None:
    """Name of the i-th formal input/output of a schema (variadic last parameter repeats)."""
    if i < len(params):
        return params[i].name
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1].name
    return None


def _node_compatible(node: onnx.NodeProto, source: int, target: int) -> bool:
    """True if ``node`` means the same at opset ``target``: same schema, or every attribute and
    every input/output position it actually uses exists with the same name in the target schema
    (later versions mostly add types, optional inputs and attributes)."""
    try:
        a = onnx.defs.get_schema(node.op_type, source, "")
        b = onnx.defs.get_schema(node.op_type, target, "")
    except onnx.defs.SchemaError:
        return False
    if a.since_version == b.since_version:
        return True
    if not {at.name for at in node.attribute} <= set(b.attributes):
        return False
    for formal_a, formal_b, actual in ((a.inputs, b.inputs, node.input), (a.outputs, b.outputs, node.output)):
        for i, name in enumerate(actual):
            if name and _formal_name(formal_a, i) != _formal_name(formal_b, i):
                return False
    required_b = sum(1 for f in b.inputs if f.option == onnx.defs.OpSchema.FormalParameterOption.Single)
    return len([n for n in node.input]) >= required_b


def _convert_nodewise(proto: onnx.ModelProto, source: int, target: int, where: str) -> onnx.ModelProto:
    """Convert node by node (every down-conversion, and up-conversions onnx's whole-model
    converter fails on): the exact rewrites of ``portanet.ir.downgrade`` first, then nodes whose
    meaning is unchanged (after dropping attributes the target lacks that hold their
    defaults), then onnx's converter on single-node models for the rest."""
    from portanet.ir import downgrade

    if min(source, target) < MIN_SAVE_OPSET:
        raise InvalidModelError(f"{where}: onnx cannot convert this model from opset {source} to {target}")
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    inits = {t.name: t for t in proto.graph.initializer}
    used = {o for n in proto.graph.node for o in [*n.output, n.name]} | set(inits) | {i.name for i in proto.graph.input}
    ctx = downgrade.DowngradeContext(target=target, where=where, inits=inits, types=types, used=used)
    new_nodes: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        rewritten = downgrade.apply(node, ctx) if target < source else None
        if rewritten is not None:
            new_nodes.extend(rewritten)
            continue
        stripped = downgrade.strip_default_attributes(node, source, target)
        if stripped is not None and _node_compatible(stripped, source, target):
            new_nodes.append(stripped)
        else:
            new_nodes.extend(_convert_single(node, types, inits, source, target, where))
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    out.graph.initializer.extend(ctx.new_inits)
    # constants a rewrite turned into attributes (Reduce axes, Split sizes) go with their node
    used_after = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    used_before = {i for n in proto.graph.node for i in n.input}
    dropped = [t for t in out.graph.initializer if t.name in used_before and t.name not in used_after]
    for t in dropped:
        out.graph.initializer.remove(t)
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in out.graph.initializer)
    try:
        # external tensors resolve only next to the file: save_onnx checks the written file
        if not external:
            onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InvalidModelError(f"{where}: cannot convert from opset {source} to {target}: {first}") from exc
    return out


def _convert_single(node, types, inits, source, target, where) -> list[onnx.NodeProto]:
    from onnx import helper

    ins, init_list = [], []
    for name in node.input:
        if not name:
            continue
        if name in inits:
            init_list.append(inits[name])
        elif name in types:
            ins.append(types[name])
        else:
            raise InvalidModelError(
                f"{where}: cannot convert node '{node.name}' ({node.op_type}) to opset {target}: type of '{name}' unknown"
            )
    outs = [types.get(n) or helper.make_empty_tensor_value_info(n) for n in node.output if n]
    g = helper.make_graph([node], "single", ins, outs, initializer=init_list)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", source)], ir_version=proto_ir(source))
    try:
        conv = onnx.version_converter.convert_version(m, target)
    except Exception as exc:  # noqa: BLE001
        raise InvalidModelError(
            f"{where}: node '{node.name}' ({node.op_type}) cannot be converted from opset {source} to {target}: "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from exc
    result = list(conv.graph.node)
    # constant inputs that the adapter folded into attributes keep their initializers in the
    # outer graph; unused ones are harmless and removed by the optimizer
    for n in result:
        if not n.metadata_props and node.metadata_props:
            n.metadata_props.extend(node.metadata_props)
    return result


def proto_ir(opset: int) -> int:
    return 8 if opset >= 15 else 7


def _initializer_bytes(model: ir.Model) -> int:
    total = 0
    for v in model.graph.initializers.values():
        t = v.const_value
        if t is not None:
            total += t.nbytes
    return total


def save_onnx(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically, converting to ``opset`` if given.

    ``external_data`` forces (True) or forbids (False) an external ``<name>.data`` file; by
    default it is used only above ~1.8 GB of weights (protobuf's 2 GB limit).
    """
    out = Path(path)
    if opset is not None and not MIN_SAVE_OPSET <= opset <= MAX_OPSET:
        raise InvalidInputError(f"opset {opset} is outside the supported range {MIN_SAVE_OPSET}-{MAX_OPSET}")
    if out.is_dir():
        raise InvalidInputError(f"{out}: is a directory")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise InvalidInputError(f"{out}: folder {parent} does not exist")
    use_ext = external_data if external_data is not None else _initializer_bytes(model) > EXTERNAL_THRESHOLD
    data_name = out.name + ".data" if use_ext else None
    tmpdir = Path(tempfile.mkdtemp(prefix=".portanet-save-", dir=parent))
    try:
        tmp = tmpdir / out.name
        target = opset if opset is not None else model_opset(model)
        if not model.ir_version or model.ir_version < IR_VERSION:
            model.ir_version = IR_VERSION
        streamed: dict | None = None
        if data_name is None and target == model_opset(model):
            # the large weights are written straight from their arrays (writer.py)
            proto, streamed = serialize_head(model)
        elif data_name is None:
            # what ir.save would write, without writing it and reading it back
            proto = ir.serde.serialize_model(model)
        else:
            ir.save(model, tmp, external_data=data_name)
            # external tensors stay in their file: this reads and rewrites the graph only
            proto = onnx.load(str(tmp), load_external_data=False)
        make_portable(proto)
        _fill_output_shapes(proto)
        if target != model_opset(model):
            proto = convert_opset(proto, target, where=str(out))
        strip_value_info(proto.graph)  # after conversion: onnx's converter writes value_info too
        if streamed is not None:
            write_streamed(proto, streamed, tmp)
        else:
            onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as exc:
            raise InvalidModelError(f"{out}: refusing to write an invalid model: {exc}") from exc
        if data_name:
            os.replace(tmpdir / data_name, parent / data_name)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmpdir)
    return out


def _fill_output_shapes(proto: onnx.ModelProto) -> None:
    """Give graph outputs declared without a shape the one ONNX inference finds (the checker
    requires a shape on every output; an IR built with ``infer=False`` may lack it)."""
    missing = [o for o in proto.graph.output if not o.type.tensor_type.HasField("shape")]
    if not missing:
        return
    try:
        inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(proto).graph.output}
    except Exception as exc:  # noqa: BLE001 - onnx raises several internal types
        log.debug("shape inference for graph outputs failed: %s", exc)
        return
    for o in missing:
        got = inferred.get(o.name)
        if got is not None and got.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.CopyFrom(got.type.tensor_type.shape)


def strip_value_info(graph: onnx.GraphProto) -> None:
    """Drop the ``value_info`` of ``graph`` and of its subgraphs (If/Loop/Scan bodies), in place."""
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                strip_value_info(attr.g)
            for g in attr.graphs:
                strip_value_info(g)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes through a temporary file and a rename (for reports, npz, repro files)."""
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".portanet-", dir=out.resolve().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return out
