"""Load-side validation of an ONNX ``ModelProto`` beyond ``onnx.checker``.

The checker accepts files that later fail deep inside onnx_ir, numpy or ONNX Runtime. This
module finds those problems while the file is still a protobuf message, so each becomes one
``InvalidModelError`` that names the file and the offending tensor, node or field:

* string fields that are not UTF-8 (protobuf hands them over as raw bytes);
* tensors with an unknown data type, negative dims, or data whose size disagrees with the
  declared shape (inline raw/typed data and external data: offset and length are checked
  against the data file's size before anything is read or allocated);
* attributes and types that ONNX's own shape inference rejects (ONNX Runtime runs the same
  checks when it loads a model).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from portanet.errors import InvalidModelError

_VALID_TYPES = {v for _k, v in onnx.TensorProto.DataType.items() if v != onnx.TensorProto.UNDEFINED}
#: element sizes in bits of the types numpy does not size natively
_BITS = {
    onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT4: 4, onnx.TensorProto.FLOAT4E2M1: 4,
    **{getattr(onnx.TensorProto, n): 2 for n in ("UINT2", "INT2") if hasattr(onnx.TensorProto, n)},
    **{getattr(onnx.TensorProto, n): 6 for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(onnx.TensorProto, n)},
}
#: above this size of the serialized graph, shape inference (which copies the model) is skipped
_INFER_LIMIT = 1_500_000_000


def _messages(msg: Message, path: str) -> Iterator[tuple[Message, str]]:
    """``msg`` and every message nested in it, with a readable path."""
    yield msg, path
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.is_repeated:
            for i, sub in enumerate(value):
                yield from _messages(sub, f"{path}.{fd.name}[{_label(sub, i)}]")
        else:
            yield from _messages(value, f"{path}.{fd.name}")


def _label(msg: Message, i: int) -> str:
    name = getattr(msg, "name", None)
    return f"'{name}'" if isinstance(name, str) and name else str(i)


def _check_strings(msg: Message, path: str, where: str) -> None:
    for fd, value in msg.ListFields():
        if fd.type != FieldDescriptor.TYPE_STRING:
            continue
        values = value if fd.is_repeated else [value]
        if any(isinstance(v, bytes) for v in values):
            raise InvalidModelError(f"{where}: field {path}.{fd.name} is not valid UTF-8 text")


def _element_count(t: onnx.TensorProto, path: str, where: str) -> int:
    if any(d < 0 for d in t.dims):
        raise InvalidModelError(f"{where}: tensor {path} has negative dims {list(t.dims)}")
    return math.prod(t.dims)


def _nbytes(t: onnx.TensorProto, n: int) -> int:
    bits = _BITS.get(t.data_type)
    if bits is None:
        bits = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
    return (n * bits + 7) // 8


def _check_tensor(t: onnx.TensorProto, path: str, where: str, base: Path | None) -> None:
    if t.data_type not in _VALID_TYPES:
        raise InvalidModelError(f"{where}: tensor {path} has unknown data type {t.data_type}")
    n = _element_count(t, path, where)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        _check_external(t, path, where, base, n)
        return
    if t.data_type == onnx.TensorProto.STRING:
        if len(t.string_data) != n:
            raise InvalidModelError(f"{where}: tensor {path} declares {n} strings but holds {len(t.string_data)}")
        return
    if t.HasField("raw_data"):
        want = _nbytes(t, n)
        if len(t.raw_data) != want:
            raise InvalidModelError(
                f"{where}: tensor {path} declares shape {list(t.dims)} ({want} bytes of "
                f"{onnx.TensorProto.DataType.Name(t.data_type)}) but holds {len(t.raw_data)} bytes"
            )
        return
    if t.data_type in _BITS:
        return  # packed sub-byte values: the packing rule differs by type; onnx_ir checks them
    field = onnx.helper.tensor_dtype_to_field(t.data_type)
    held = len(getattr(t, field))
    if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        held //= 2
    # an empty typed field with no raw_data is a tensor whose values were never written
    if held != n:
        raise InvalidModelError(f"{where}: tensor {path} declares shape {list(t.dims)} ({n} values) but holds {held}")


def _check_external(t: onnx.TensorProto, path: str, where: str, base: Path | None, n: int) -> None:
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location")
    if base is None or loc is None:
        return  # location problems are reported by the caller with the folder rules
    file = base / loc
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as exc:
        raise InvalidModelError(f"{where}: tensor {path} has a malformed external-data offset/length") from exc
    want = _nbytes(t, n)
    size = file.stat().st_size if file.is_file() else 0
    if offset < 0 or (length is not None and length < 0):
        raise InvalidModelError(f"{where}: tensor {path} has a negative external-data offset or length")
    if length is not None and length != want:
        raise InvalidModelError(
            f"{where}: tensor {path} declares shape {list(t.dims)} ({want} bytes) but its external data "
            f"length is {length} bytes"
        )
    if offset + want > size:
        raise InvalidModelError(
            f"{where}: external data file '{loc}' is {size} bytes; tensor {path} needs bytes "
            f"{offset}..{offset + want} (truncated data file?)"
        )


def _interface(proto: onnx.ModelProto) -> Iterator[onnx.ValueInfoProto]:
    yield from proto.graph.input
    yield from proto.graph.output
    yield from proto.graph.value_info


def _complete(vi: onnx.ValueInfoProto) -> bool:
    """The type fields onnx.checker requires of graph inputs/outputs: an element type and a shape."""
    if not vi.HasField("type"):
        return False
    which = vi.type.WhichOneof("value")
    if which != "tensor_type":
        return True  # sequences, maps, optionals: left to the checker
    return vi.type.tensor_type.HasField("elem_type") and vi.type.tensor_type.HasField("shape")


def _forget_generated_dims(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """Turn the placeholder dim names ONNX inference invents (``unk__3``) into unknown dims, so
    later inference (the optimizer's, which keeps named dims) can still find their sizes."""
    if vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.HasField("shape"):
        for d in vi.type.tensor_type.shape.dim:
            if d.WhichOneof("value") == "dim_param" and d.dim_param.startswith("unk__"):
                d.ClearField("dim_param")
    return vi


def repair_interface(proto: onnx.ModelProto) -> bool:
    """Accept what ONNX Runtime accepts (in place):

    * dims written as a literal ``-1`` (older exporters' "any size") become free dims;
    * graph outputs (and value_info) without a shape or type get the ones ONNX shape
      inference finds, where it finds them.

    Returns True if anything changed.
    """
    changed = False
    for vi in _interface(proto):
        if vi.type.WhichOneof("value") == "tensor_type" and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                if d.WhichOneof("value") == "dim_value" and d.dim_value < 0:
                    d.ClearField("dim_value")
                    changed = True
    incomplete = [vi for vi in [*proto.graph.output, *proto.graph.value_info] if not _complete(vi)]
    if not incomplete or proto.ByteSize() >= _INFER_LIMIT:
        return changed
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    for vi in bare.graph.output:
        if not _complete(vi):
            vi.ClearField("type")
    del bare.graph.value_info[:]  # inference recomputes them; stale partial entries only confuse it
    try:
        inferred = onnx.shape_inference.infer_shapes(bare)
    except Exception:  # noqa: BLE001 - repair is best effort; validate_proto reports real errors
        return changed
    found = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output] if _complete(vi)}
    outputs = {vi.name for vi in proto.graph.output}
    for vi in incomplete:
        if vi.name in found:
            vi.type.CopyFrom(found[vi.name].type)
            if vi.name not in outputs:
                _forget_generated_dims(vi)
            changed = True
    # value_info entries that stay incomplete carry nothing the checker accepts: drop them
    keep = [vi for vi in proto.graph.value_info if _complete(vi)]
    if len(keep) != len(proto.graph.value_info):
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(keep)
        changed = True
    return changed


def checker_view(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy for ``onnx.checker`` in which graph inputs/outputs that still lack a type or shape
    (ONNX Runtime runs such models) carry a placeholder; None when none does."""
    if all(_complete(vi) for vi in [*proto.graph.input, *proto.graph.output]):
        return None
    view = onnx.ModelProto()
    view.CopyFrom(proto)
    for vi in [*view.graph.input, *view.graph.output]:
        if not _complete(vi):
            t = vi.type.tensor_type
            if not t.HasField("elem_type"):
                t.elem_type = onnx.TensorProto.FLOAT
            t.shape.SetInParent()
    return view


def check_strings(proto: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Raise ``InvalidModelError`` if any string field of ``proto`` is not UTF-8."""
    for msg, mpath in _messages(proto, "model"):
        _check_strings(msg, mpath, str(path))


def validate_proto(proto: onnx.ModelProto, path: str | os.PathLike[str], *, infer: bool = True) -> None:
    """Raise ``InvalidModelError`` for the problems listed in the module docstring."""
    where = str(path)
    base = Path(path).resolve().parent
    for msg, mpath in _messages(proto, "model"):
        if isinstance(msg, onnx.TensorProto):
            _check_tensor(msg, mpath.removeprefix("model.graph."), where, base)
        elif isinstance(msg, onnx.TypeProto.Tensor | onnx.TypeProto.SparseTensor) and msg.HasField("elem_type"):
            if msg.elem_type not in _VALID_TYPES:
                raise InvalidModelError(f"{where}: {mpath.removeprefix('model.graph.')} has unknown element type "
                                        f"{msg.elem_type}")
    seen: set[str] = set()
    for node in proto.graph.node:  # ONNX Runtime refuses a graph with two nodes of one name
        if node.name and node.name in seen:
            raise InvalidModelError(f"{where}: two nodes are named '{node.name}' (node names must be unique)")
        seen.add(node.name)
    if infer and proto.ByteSize() < _INFER_LIMIT:
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise InvalidModelError(f"{where}: ONNX shape inference rejected the model: {first}") from exc
        # files without value_info (allowed, and common): intermediate values get their types,
        # so tools that expose them as outputs (bisection) know their element types
        known = {vi.name for vi in _interface(proto)}
        proto.graph.value_info.extend(_forget_generated_dims(vi) for vi in inferred.graph.value_info
                                      if vi.name not in known and _complete(vi))
