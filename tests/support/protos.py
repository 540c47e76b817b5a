"""Compiling a proto written in a test, the way users of the gateway do (protoc with
``--include_imports --include_source_info``), with googleapis from the installed package."""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc_tools
from grpc_tools import protoc

SITE_PACKAGES = Path(grpc.__file__).resolve().parents[1]


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
        *generated,
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        "--include_source_info",
        relative,
    ]
    assert protoc.main(args) == 0, f"protoc failed on {relative}"
    return descriptor_set
