"""A service is a declaration; `run` lives its whole life.

Each ``services/<name>/__main__.py`` declares one `Service`: its name, the gRPC API it
serves, its migrations and bus tables, the peers it calls, how its own settings are read
(its ``settings.py``), and `wire`, which builds the service's parts (servicer, event
handlers, background workers) from a `Context`. `run`
then does what every service does, in one order: settings, telemetry, database and
migrations, channels to peers, the bus node, the server with the kit's middleware chain,
the workers beside it, and the drain on SIGTERM. Nothing else wires a service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.kit import authn, authz, bus, clients, config, db, federation, priority, server, telemetry
from services.kit.bus import BusTables, EventHandler, Outbox
from services.kit.types import Background

__all__ = ["Context", "Parts", "Service", "no_settings", "run"]

_log = logging.getLogger("poly.app")

_S = TypeVar("_S")


@dataclass(frozen=True)
class Context(Generic[_S]):
    """What a service's `wire` builds its parts from."""

    settings: config.Settings
    """The kit's settings: server, TLS, database, bus, accepted tokens, telemetry."""
    service_settings: _S
    """The service's own, as its `Service.settings` read them."""
    engine: Engine
    """The service's database (`kit.db.transactions` opens the transactions of its store)."""
    outbox: Outbox
    """Where the service publishes: a row in the transaction of the change that publishes."""
    channels: clients.Channels
    """Channels to the peers the service declared in `Service.calls` (and to auth)."""
    background: priority.BackgroundThreads = priority.INLINE
    """Where the service's workers lower their threads and run their transactions."""


@dataclass(frozen=True)
class Parts:
    """What `wire` returns: the pieces `run` serves."""

    servicer: object
    handlers: Mapping[type[Message], EventHandler] = field(default_factory=dict)
    """The handler of each event the service consumes: its saga steps and projections.
    Exactly the types the event contract names it a consumer of (checked at start)."""
    workers: Sequence[Background] = ()
    """Started once the server accepts calls, stopped after the drain, in reverse order."""
    verifier: authn.Verifier | None = None
    """How access tokens are checked; None means against the auth service's JWKS."""


def no_settings(env: config.Reader, settings: config.Settings) -> None:
    """For a service with no settings of its own."""
    return None


@dataclass(frozen=True)
class Service(Generic[_S]):
    name: str
    api: ServiceDescriptor
    """The public gRPC service, e.g. ``orders_service_pb2.DESCRIPTOR.services_by_name[...]``."""
    add_servicer: Callable[[Any, grpc.Server], None]
    """The generated ``add_<Api>Servicer_to_server``."""
    migrations: Path
    bus_tables: BusTables
    settings: Callable[[config.Reader, config.Settings], _S]
    """Reads the service's own settings (its ``settings.py``'s `read`), or `no_settings`."""
    wire: Callable[[Context[_S]], Parts]
    calls: Mapping[str, Sequence[ServiceDescriptor]] = field(default_factory=dict)
    """Peer name -> the services called on it (their retry policy comes from their methods'
    idempotency options)."""


def run(service: Service[_S]) -> None:
    """Serve `service` until SIGTERM or SIGINT, then drain and return (exit status 0).

    A configuration, database or start-up problem ends the process with a clear message
    (status 2 for configuration, 1 otherwise), never a traceback."""
    settings, own = config.load_with_or_exit(service.name, service.settings)
    telemetry.setup_or_exit(settings)
    priority.lower_cpu_priority(settings.server.nice)
    background = priority.BackgroundThreads(settings.server.background_nice)
    engine = db.connect_or_exit(settings.db, migrations=service.migrations)
    channels = clients.Channels(settings, services={"auth": [authn.AUTH_SERVICE], **service.calls})
    try:
        wired: list[Parts] = []

        def handlers(outbox: Outbox) -> Mapping[type[Message], EventHandler]:
            # The node makes the outbox; the parts publish through it, so they are built here.
            context = Context(settings, own, engine, outbox, channels, background)
            wired.append(service.wire(context))
            return wired[0].handlers

        try:
            events_node = bus.node(settings, engine, service.bus_tables, handlers, background=background)
        except (ValueError, SQLAlchemyError) as error:
            # Handlers the event contract does not list, or a database that fails while the
            # parts are built (templates, signing keys): say what, and stop.
            _log.error("cannot start %s: %s", service.name, error)
            raise SystemExit(1) from None
        parts = wired[0]
        registrations = [
            server.registration(service.api, service.add_servicer, parts.servicer),
            events_node.registration,
        ]
        external = federation.trusted_issuers(settings.auth, timeout=settings.client_deadline_seconds)
        verifier = parts.verifier or authn.remote_verifier(settings, channels, external=external)
        server.serve(
            settings,
            registrations,
            middlewares=[
                *authz.service_middlewares(settings, verifier, registrations),
                db.call_middleware(),
            ],
            background=[events_node, *parts.workers],
        )
    finally:
        background.close()  # the workers' last transactions, before the database closes
        channels.close()
        engine.dispose()
