"""`make lint`: ``python -m services.cli.openapi OUT`` writes the OpenAPI document Polyservice's
own edge serves at ``/openapi.json`` to OUT, for openapi-spec-validator and ``redocly lint``.

The edge's configuration comes from the ``POLY_*`` environment as ``poly up`` gives it
(`gateway.config.from_environment`: by default the descriptor set ``make gen`` writes), and the
document from `gateway.catalog.load_routing`, the function the serving edge builds its routes
and ``/openapi.json`` with. Routes come from the descriptor set, so no backend is called
(with ``POLY_GATEWAY_DESCRIPTOR_SET`` unset the installed one is used; reflection is not).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.backends import Backends
from gateway.catalog import load_routing
from gateway.config import EdgeConfig, from_environment
from gateway.descriptors import DescriptorSetError
from services.cli.exits import FAILURE, OK, USAGE
from services.kit.config import ConfigError
from services.kit.types import Environ

__all__ = ["document", "main"]


def document(environ: Environ | None = None) -> dict[str, Any]:
    """The document Polyservice's own edge serves under `environ` (by default the process's)."""
    _, edge = from_environment(environ)
    return asyncio.run(_document(edge))


async def _document(edge: EdgeConfig) -> dict[str, Any]:
    backends = Backends(edge.backends, edge.default_backend)  # no channel opens: routes come from a file
    try:
        return (await load_routing(edge, backends)).document
    finally:
        await backends.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m services.cli.openapi OUT", file=sys.stderr)
        return USAGE
    try:
        found = document()
    except ConfigError as error:
        print(f"openapi: {error}", file=sys.stderr)
        return USAGE
    except (DescriptorSetError, ValueError, OSError) as error:
        print(f"openapi: {error}", file=sys.stderr)
        return FAILURE
    out = Path(args[0])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        print(f"openapi: cannot write {out}: {error.strerror or error}", file=sys.stderr)
        return FAILURE
    return OK


if __name__ == "__main__":
    sys.exit(main())
