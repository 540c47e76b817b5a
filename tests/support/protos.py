"""Compiling a proto written in a test, the way users of the gateway do (protoc with
``--include_imports --include_source_info``), with googleapis from the installed package;
and test-only message types built from descriptors in the default pool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc_tools
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

SITE_PACKAGES = Path(grpc.__file__).resolve().parents[1]
PROTOS = Path(__file__).resolve().parents[2] / "protos"


def compile_proto(root: Path, relative: str, text: str, *, python: bool = False) -> Path:
    """Write `text` to `root`/`relative` and compile it; returns the FileDescriptorSet written
    beside it. With `python`, the _pb2 and _pb2_grpc modules are generated under `root` too."""
    source = root / relative
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    descriptor_set = root / (source.stem + ".binpb")
    generated = [f"--python_out={root}", f"--grpc_python_out={root}"] if python else []
    args = [
        "protoc",
        f"-I{root}",
        f"-I{SITE_PACKAGES}",
        f"-I{Path(grpc_tools.__file__).with_name('_proto')}",
        f"-I{PROTOS}",  # poly/options/v1/options.proto, for a foreign service that uses them
        *generated,
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        "--include_source_info",
        relative,
    ]
    assert protoc.main(args) == 0, f"protoc failed on {relative}"
    return descriptor_set


def pooled_message(full_name: str, file: Callable[[], descriptor_pb2.FileDescriptorProto]) -> Any:
    """The class of the message `full_name`, whose `file` (built only the first time) is added
    to the default pool once per process, whichever test module asks first."""
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
    except KeyError:
        pool.Add(file())
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


Field = tuple[str, str, int, int, str]
"""A field to add: name, JSON name, type, label and (for a message or enum) type name."""


def add_fields(
    message: descriptor_pb2.DescriptorProto, fields: list[Field]
) -> dict[str, descriptor_pb2.FieldDescriptorProto]:
    """Add `fields` to `message`, numbered after those it has; the added ones by name."""
    added = {}
    for name, json_name, kind, label, type_name in fields:
        field = message.field.add(
            name=name, number=len(message.field) + 1, type=kind, label=label, json_name=json_name
        )
        if type_name:
            field.type_name = type_name
        added[name] = field
    return added


def add_map_entry(
    message: descriptor_pb2.DescriptorProto, name: str, value_type: int, value_type_name: str = ""
) -> None:
    """The nested ``<Name>Entry`` message of a ``map<string, value>`` field of `message`."""
    entry = message.nested_type.add(name=name)
    entry.options.map_entry = True
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    add_fields(
        entry,
        [
            ("key", "key", descriptor_pb2.FieldDescriptorProto.TYPE_STRING, optional, ""),
            ("value", "value", value_type, optional, value_type_name),
        ],
    )
