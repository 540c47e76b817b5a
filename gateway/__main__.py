"""Entry point: ``python -m gateway [ARGS]`` (also ``poly gateway [ARGS]``).

With arguments (or ``--config FILE``), it serves any gRPC backends named there; see
``--help``. Without any, it serves Polyservice's own APIs from the ``POLY_*`` settings, as
``poly up`` runs it: routes from ``POLY_GATEWAY_DESCRIPTOR_SET`` (by default the set
``make gen`` writes) for the services of ``POLY_GATEWAY_BACKENDS``, over mTLS.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from gateway import config as edge_config
from gateway.arguments import from_arguments
from gateway.server import StartError, serve
from services.kit import config, logs

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        try:
            edge = from_arguments(argv)
        except edge_config.ConfigError as error:
            sys.stderr.write(f"poly gateway: {error}\n")
            return 2
        logs.setup("gateway", edge.log_level)
    else:
        settings = config.load_or_exit("gateway")
        logs.setup(settings.service, settings.log_level)
        edge = edge_config.from_settings(settings)
    try:
        asyncio.run(serve(edge))
    except StartError as error:
        sys.stderr.write(f"poly gateway: {error}\n")
        return 2 if error.usage else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
