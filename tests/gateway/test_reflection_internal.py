"""gateway.reflection internals: the order files enter a pool in."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2

from gateway.reflection import ReflectionError, _pool


def _file(name: str, *imports: str) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(name=name, package="chain", dependency=list(imports))


def test_a_long_import_chain_does_not_exhaust_the_stack() -> None:
    files = {
        f"f{i}.proto": _file(f"f{i}.proto", *([f"f{i + 1}.proto"] if i < 2999 else [])) for i in range(3000)
    }
    pool = _pool(files)
    assert pool.FindFileByName("f0.proto").dependencies[0].name == "f1.proto"


def test_diamond_imports_are_added_once() -> None:
    files = {
        "a.proto": _file("a.proto", "b.proto", "d.proto"),
        "b.proto": _file("b.proto", "d.proto"),
        "d.proto": _file("d.proto"),
    }
    assert _pool(files).FindFileByName("a.proto").name == "a.proto"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.proto": _file("a.proto", "b.proto"), "b.proto": _file("b.proto", "a.proto")}, "import cycle"),
        ({"a.proto": _file("a.proto", "gone.proto")}, "did not provide gone.proto"),
    ],
    ids=["cycle", "missing"],
)
def test_refusals(files: dict[str, descriptor_pb2.FileDescriptorProto], message: str) -> None:
    with pytest.raises(ReflectionError, match=message):
        _pool(files)
