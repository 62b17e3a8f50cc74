"""Protobuf messages declared in Python tables and built with the protobuf runtime: no protoc, no TensorFlow.

The package reads and writes a few upstream formats whose generated modules it cannot import: Caffe's
`NetParameter` (no Caffe), TF Serving's client messages (`tensorflow-serving-api` loads TensorFlow), and
the config messages `tensorflow-serving-api` does not ship. Each declares its messages as a table here,
with the upstream names and field numbers, and gets classes from a descriptor pool of its own, so they
never clash with the same names that TensorFlow registers in the default pool.

A field is `(name, number, kind, repeated, option)`:
- kind: a scalar type (`"int32"`, `"string"`, ...), a message `".package.Message"`, an enum
  `"enum:.package.Enum"`, or a map from strings to messages `"map:.package.Message"`;
- option: in a proto3 file the name of the oneof the field belongs to, in a proto2 file its default
  value as text (None: neither).
Messages and enums named `"A.B"` are nested in message `A`. Repeated numbers are written `[packed =
true]` in proto3 files (as upstream writes them), and in proto2 files where `packed` names them.

Example:
>>> classes = message_classes(
...     [ProtoFile("demo.proto", "demo", {"Point": [("x", 1, "int32", False, None)]})], "demo", ["Point"]
... )
>>> classes["Point"].FromString(classes["Point"](x=3).SerializeToString()).x
3
"""

from __future__ import annotations

import dataclasses

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64, "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}  # fmt: skip


@dataclasses.dataclass
class ProtoFile:
    """One .proto file: its name, package, messages and enums (see the module docstring for the tables).

    Attributes:
        name: the file's name in the pool (other files depend on it by this name).
        package: the proto package, e.g. `tensorflow.serving`.
        messages: `{message name: [field, ...]}`, in declaration order.
        enums: `{enum name: [(value name, number), ...]}`.
        dependencies: names of files (in the same pool) whose types the fields use.
        syntax: `"proto3"` or `"proto2"`.
        packed: `{(message, field)}` declared `[packed = true]` in a proto2 file.
    """

    name: str
    package: str
    messages: dict
    enums: dict = dataclasses.field(default_factory=dict)
    dependencies: list = dataclasses.field(default_factory=list)
    syntax: str = "proto3"
    packed: set = dataclasses.field(default_factory=set)

    def descriptor(self) -> descriptor_pb2.FileDescriptorProto:
        file = descriptor_pb2.FileDescriptorProto(
            name=self.name, package=self.package, syntax=self.syntax, dependency=list(self.dependencies)
        )
        messages = {}
        for full_name, fields in self.messages.items():
            parent, _, name = full_name.rpartition(".")
            message = (messages[parent].nested_type if parent else file.message_type).add(name=name)
            messages[full_name] = message
            for spec in fields:
                self._add_field(message, full_name, spec)
        for full_name, values in self.enums.items():
            parent, _, name = full_name.rpartition(".")
            enum = (messages[parent].enum_type if parent else file.enum_type).add(name=name)
            for value_name, number in values:
                enum.value.add(name=value_name, number=number)
        return file

    def _add_field(self, message, message_name: str, spec: tuple) -> None:
        name, number, kind, repeated, option = spec
        field = message.field.add(name=name, number=number, label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
        if kind.startswith("map:"):  # a nested `<Name>Entry {key = 1; value = 2}` message marked map_entry
            entry = message.nested_type.add(name="".join(part.title() for part in name.split("_")) + "Entry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
            entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL, type=_F.TYPE_MESSAGE, type_name=kind[4:])
            field.type, field.type_name = _F.TYPE_MESSAGE, f".{self.package}.{message_name}.{entry.name}"
        elif kind.startswith("enum:"):
            field.type, field.type_name = _F.TYPE_ENUM, kind[len("enum:") :]
        elif kind.startswith("."):
            field.type, field.type_name = _F.TYPE_MESSAGE, kind
        else:
            field.type = SCALARS[kind]
            proto3_packed = self.syntax == "proto3" and repeated and kind not in ("string", "bytes")
            if proto3_packed or (message_name, name) in self.packed:
                field.options.packed = True
        if option is None:
            return
        if self.syntax == "proto2":
            field.default_value = option
            return
        names = [decl.name for decl in message.oneof_decl]
        if option not in names:
            message.oneof_decl.add(name=option)
            names.append(option)
        field.oneof_index = names.index(option)


def build_pool(files: list[ProtoFile], well_known=()) -> descriptor_pool.DescriptorPool:
    """A descriptor pool of its own holding `files`, after the well-known files they depend on.

    Args:
        files: the files, each after those it depends on.
        well_known: generated modules of protobuf's well-known types the files use (e.g. `wrappers_pb2`).
    """
    pool = descriptor_pool.DescriptorPool()
    for module in well_known:
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        pool.Add(file)
    for file in files:
        pool.Add(file.descriptor())
    return pool


def message_classes(files: list[ProtoFile], package: str, names, well_known=(), pool=None) -> dict:
    """`{name: message class}` of messages `package.name` built from `files` (or found in `pool`)."""
    pool = pool or build_pool(files, well_known)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}")) for name in names}
