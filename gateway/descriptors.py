"""The services the edge serves, from a FileDescriptorSet: descriptors, options, comments.

The set comes from ``protoc --include_imports --include_source_info -o`` or ``buf build -o``
(Polyservice's own is ``gen/poly/descriptors.binpb``, written by ``make gen``). Everything
the edge knows about an API is read from here: routes, message shapes, option values and
the comments that become OpenAPI descriptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

__all__ = ["DescriptorSet", "DescriptorSetError", "load_descriptor_set", "source_comments"]

# FileDescriptorProto field numbers used by SourceCodeInfo paths.
_MESSAGE, _ENUM, _SERVICE = 4, 5, 6
_FIELD, _NESTED, _NESTED_ENUM, _METHOD, _VALUE = 2, 3, 4, 2, 2


class DescriptorSetError(ValueError):
    """The descriptor set cannot be read, or lacks a service asked for."""


@dataclass
class DescriptorSet:
    pool: descriptor_pool.DescriptorPool
    files: Sequence[descriptor_pb2.FileDescriptorProto]
    _comments: dict[str, str] | None = field(default=None, repr=False)

    def services(self, names: Iterable[str]) -> list[ServiceDescriptor]:
        """The descriptors of `names` (full service names); every unknown one is listed."""
        found, missing = [], []
        for name in names:
            try:
                found.append(self.pool.FindServiceByName(name))
            except KeyError:
                missing.append(name)
        if missing:
            raise DescriptorSetError(f"not in the descriptor set: {', '.join(sorted(missing))}")
        return found

    def service_names(self) -> list[str]:
        """The full name of every service the set's files define."""
        return sorted(
            f"{file.package}.{service.name}" if file.package else service.name
            for file in self.files
            for service in file.service
        )

    def method_option(self, method: MethodDescriptor, extension: str) -> object | None:
        """The value of the custom method option `extension` (e.g. ``acme.v1.policy``), read
        through this set's own pool, so the edge needs no generated code for it."""
        try:
            found = self.pool.FindExtensionByName(extension)
            options_class = message_factory.GetMessageClass(
                self.pool.FindMessageTypeByName("google.protobuf.MethodOptions")
            )
        except KeyError:
            return None
        options = options_class.FromString(method.GetOptions().SerializeToString())
        if found.is_repeated:  # no presence: absent is empty
            values: list[object] = list(options.Extensions[found])  # type: ignore[index]
            return values or None
        if not options.HasExtension(found):  # type: ignore[arg-type]
            return None
        value: object = options.Extensions[found]  # type: ignore[index]
        return value  # a message, a scalar for a scalar option, a list for a repeated one

    def comment(self, full_name: str) -> str:
        """The leading comment of a service, method, message, field, enum or enum value."""
        if self._comments is None:
            self._comments = {}
            for file in self.files:
                self._comments.update(source_comments(file))
        return self._comments.get(full_name, "")


def load_descriptor_set(path: Path) -> DescriptorSet:
    """Every file of the set at `path` in a pool of its own."""
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    except OSError as error:
        raise DescriptorSetError(f"cannot read descriptor set {path}: {error.strerror or error}") from None
    except DecodeError:
        raise DescriptorSetError(f"{path} is not a FileDescriptorSet") from None
    pool = descriptor_pool.DescriptorPool()
    try:
        for file in files:
            pool.Add(file)
    except (TypeError, ValueError) as error:
        raise DescriptorSetError(f"{path}: {error}") from None
    return DescriptorSet(pool, list(files))


def source_comments(file: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """The leading comments `file`'s source info kept, by full name of what they describe
    (services, methods, messages, fields, enums, enum values); {} without source info."""
    texts = {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }
    found: dict[str, str] = {}
    prefix = f"{file.package}." if file.package else ""

    def note(path: tuple[int, ...], name: str) -> None:
        if path in texts:
            found[name] = texts[path]

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, name: str) -> None:
        note(path, name)
        for index, field_proto in enumerate(proto.field):
            note((*path, _FIELD, index), f"{name}.{field_proto.name}")
        for index, nested in enumerate(proto.nested_type):
            message((*path, _NESTED, index), nested, f"{name}.{nested.name}")
        for index, enum in enumerate(proto.enum_type):
            enumeration((*path, _NESTED_ENUM, index), enum, f"{name}.{enum.name}")

    def enumeration(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, name: str) -> None:
        note(path, name)
        for index, value in enumerate(proto.value):
            note((*path, _VALUE, index), f"{name}.{value.name}")

    for index, proto in enumerate(file.message_type):
        message((_MESSAGE, index), proto, prefix + proto.name)
    for index, enum in enumerate(file.enum_type):
        enumeration((_ENUM, index), enum, prefix + enum.name)
    for index, service in enumerate(file.service):
        note((_SERVICE, index), prefix + service.name)
        for method_index, method in enumerate(service.method):
            note((_SERVICE, index, _METHOD, method_index), f"{prefix}{service.name}.{method.name}")
    return found
