"""The CNTK v2 protobuf schema (package ``CNTK.proto``), declared in Python.

CNTK 2.x saves a model as one serialized ``Dictionary`` (proto3). The messages and field
numbers below are those of CNTK's ``CNTK.proto``; they are declared here with protobuf's
descriptor API so no generated ``_pb2`` module or protoc is needed. The message classes are
built on first use:

    Dictionary = message_class("Dictionary")
    d = Dictionary.FromString(data)
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "CNTK.proto"
FILE_NAME = "portanet/cntk/CNTK.proto"

_F = descriptor_pb2.FieldDescriptorProto

# DictionaryValue.Type (value_type): which member of the oneof holds the value
VALUE_TYPES = {
    "None": 0, "Bool": 1, "Int": 2, "SizeT": 3, "Float": 4, "Double": 5, "String": 6,
    "NDShape": 7, "Axis": 8, "Vector": 9, "Dictionary": 10, "NDArrayView": 11,
}
# NDArrayView.DataType
DATA_TYPES = {"Unknown": 0, "Float": 1, "Double": 2, "Float16": 4, "Int8": 5, "Int16": 6}
# NDArrayView.StorageFormat
STORAGE_FORMATS = {"Dense": 0, "SparseCSC": 1, "SparseBlockCol": 2}


def _field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    ftype: int,
    *,
    repeated: bool = False,
    type_name: str | None = None,
    oneof: int | None = None,
    packed: bool = False,
) -> None:
    f = msg.field.add()
    f.name = name
    f.number = number
    f.type = ftype
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = f".{PACKAGE}.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof
    if packed:
        f.options.packed = True


def _enum(parent: descriptor_pb2.DescriptorProto, name: str, values: dict[str, int]) -> None:
    e = parent.enum_type.add()
    e.name = name
    for vname, number in values.items():
        v = e.value.add()
        # proto3 enum value names are scoped to the enclosing message: keep them unique
        v.name = f"{name}_{vname}"
        v.number = number


def _build_file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto()
    fd.name = FILE_NAME
    fd.package = PACKAGE
    fd.syntax = "proto3"

    # message NDShape { repeated uint64 shape_dim = 1 [packed = true]; }
    nd_shape = fd.message_type.add(name="NDShape")
    _field(nd_shape, "shape_dim", 1, _F.TYPE_UINT64, repeated=True, packed=True)

    # message Axis { int32 static_axis_idx = 1; string name = 2; bool is_ordered_dynamic_axis = 3; }
    axis = fd.message_type.add(name="Axis")
    _field(axis, "static_axis_idx", 1, _F.TYPE_INT32)
    _field(axis, "name", 2, _F.TYPE_STRING)
    _field(axis, "is_ordered_dynamic_axis", 3, _F.TYPE_BOOL)

    # message NDArrayView { DataType data_type = 1; StorageFormat storage_format = 2; NDShape shape = 3;
    #   oneof values { FloatValues float_values = 4; DoubleValues double_values = 5;
    #                  BytesValue bytes_value = 6; IntValues sint32_values = 7; } }
    view = fd.message_type.add(name="NDArrayView")
    _enum(view, "DataType", DATA_TYPES)
    _enum(view, "StorageFormat", STORAGE_FORMATS)
    for sub, ftype in (("FloatValues", _F.TYPE_FLOAT), ("DoubleValues", _F.TYPE_DOUBLE)):
        m = view.nested_type.add(name=sub)
        _field(m, "value", 1, ftype, repeated=True, packed=True)
    m = view.nested_type.add(name="BytesValue")
    _field(m, "value", 1, _F.TYPE_BYTES)
    m = view.nested_type.add(name="IntValues")
    _field(m, "value", 1, _F.TYPE_SINT32, repeated=True, packed=True)
    view.oneof_decl.add(name="values")
    _field(view, "data_type", 1, _F.TYPE_ENUM, type_name="NDArrayView.DataType")
    _field(view, "storage_format", 2, _F.TYPE_ENUM, type_name="NDArrayView.StorageFormat")
    _field(view, "shape", 3, _F.TYPE_MESSAGE, type_name="NDShape")
    _field(view, "float_values", 4, _F.TYPE_MESSAGE, type_name="NDArrayView.FloatValues", oneof=0)
    _field(view, "double_values", 5, _F.TYPE_MESSAGE, type_name="NDArrayView.DoubleValues", oneof=0)
    _field(view, "bytes_value", 6, _F.TYPE_MESSAGE, type_name="NDArrayView.BytesValue", oneof=0)
    _field(view, "sint32_values", 7, _F.TYPE_MESSAGE, type_name="NDArrayView.IntValues", oneof=0)

    # message Vector { repeated DictionaryValue value = 1; }
    vector = fd.message_type.add(name="Vector")
    _field(vector, "value", 1, _F.TYPE_MESSAGE, repeated=True, type_name="DictionaryValue")

    # message Dictionary { uint64 version = 1; map<string, DictionaryValue> data = 2; }
    dictionary = fd.message_type.add(name="Dictionary")
    entry = dictionary.nested_type.add(name="DataEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name="DictionaryValue")
    _field(dictionary, "version", 1, _F.TYPE_UINT64)
    _field(dictionary, "data", 2, _F.TYPE_MESSAGE, repeated=True, type_name="Dictionary.DataEntry")

    # message DictionaryValue { uint64 version = 1; Type value_type = 2; oneof value { ... 3..13 } }
    dv = fd.message_type.add(name="DictionaryValue")
    _enum(dv, "Type", VALUE_TYPES)
    dv.oneof_decl.add(name="value")
    _field(dv, "version", 1, _F.TYPE_UINT64)
    _field(dv, "value_type", 2, _F.TYPE_ENUM, type_name="DictionaryValue.Type")
    _field(dv, "bool_value", 3, _F.TYPE_BOOL, oneof=0)
    _field(dv, "int_value", 4, _F.TYPE_INT32, oneof=0)
    _field(dv, "size_t_value", 5, _F.TYPE_UINT64, oneof=0)
    _field(dv, "float_value", 6, _F.TYPE_FLOAT, oneof=0)
    _field(dv, "double_value", 7, _F.TYPE_DOUBLE, oneof=0)
    _field(dv, "string_value", 8, _F.TYPE_STRING, oneof=0)
    _field(dv, "nd_shape_value", 9, _F.TYPE_MESSAGE, type_name="NDShape", oneof=0)
    _field(dv, "axis_value", 10, _F.TYPE_MESSAGE, type_name="Axis", oneof=0)
    _field(dv, "vector_value", 11, _F.TYPE_MESSAGE, type_name="Vector", oneof=0)
    _field(dv, "dictionary_value", 12, _F.TYPE_MESSAGE, type_name="Dictionary", oneof=0)
    _field(dv, "nd_array_view_value", 13, _F.TYPE_MESSAGE, type_name="NDArrayView", oneof=0)
    return fd


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    # a private pool: never collides with another CNTK.proto registered in the default pool
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_build_file())
    return pool


@functools.cache
def message_class(name: str) -> Any:
    """The generated message class for ``name`` ("Dictionary", "DictionaryValue", "NDArrayView", ...)."""
    desc = _pool().FindMessageTypeByName(f"{PACKAGE}.{name}")
    return message_factory.GetMessageClass(desc)
