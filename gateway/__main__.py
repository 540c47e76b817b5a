"""Entry point: ``python -m gateway [ARGS]`` (also ``poly gateway [ARGS]``).

With arguments (or ``--config FILE``), it serves any gRPC backends named there; see
``--help``. Without any, it serves Polyservice's own APIs from the ``POLY_*`` settings, as
``poly up`` runs it: routes from ``POLY_GATEWAY_DESCRIPTOR_SET`` (by default the set
``make gen`` writes) for the services of ``POLY_GATEWAY_BACKENDS``, over mTLS.

Either way telemetry is the kit's (`services.kit.telemetry`): JSON logs carrying trace ids,
traces from the standard ``OTEL_*`` environment, and ``/metrics`` on
``POLY_GATEWAY_METRICS_PORT`` (Polyservice's edge) or ``--metrics-listen`` (standalone).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace

from gateway import config as edge_config
from gateway.arguments import from_arguments
from gateway.server import StartError, observer_for, serve
from services.kit import config, telemetry

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv:
        try:
            edge = from_arguments(argv)
        except edge_config.ConfigError as error:
            sys.stderr.write(f"poly gateway: {error}\n")
            return 2
        # The OTEL_* environment as Polyservice reads it; the metrics address is the edge's own.
        settings = replace(
            config.load_or_exit("gateway").telemetry,
            metrics_host=edge.metrics_host,
            metrics_port=edge.metrics_port,
        )
        try:
            observed = telemetry.setup_component(
                "gateway",
                edge.log_level,
                settings,
                port_hint="--metrics-listen moves it; without it, none is served",
            )
        except telemetry.StartupError as error:
            sys.stderr.write(f"poly gateway: {error}\n")
            return 1
    else:
        poly, gateway = config.load_with_or_exit("gateway", edge_config.read_settings)
        observed = telemetry.setup_or_exit(poly)
        edge = edge_config.from_settings(poly, gateway)
    try:
        asyncio.run(serve(edge, observer=observer_for(edge, observed)))
    except StartError as error:
        sys.stderr.write(f"poly gateway: {error}\n")
        return 2 if error.usage else 1
    finally:
        observed.close()  # bounded: queued spans are exported, /metrics stops
    return 0


if __name__ == "__main__":
    sys.exit(main())
