"""`poly`: the operator's command line.

poly certs [--force]   development CA and one certificate per component
poly up                start every service, wait until healthy, supervise
poly status            each component's health
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.kit import config, tls
from services.kit.bus import BusTables

__all__ = ["main"]


def _certs(settings: config.Settings, force: bool) -> int:
    directory = settings.tls.ca_file.parent
    try:
        issued = tls.ensure_certificates(
            directory,
            config.COMPONENTS,
            force=force,
            trust_domain=settings.tls.trust_domain,
            namespace=settings.tls.namespace,
        )
    except tls.CertificateError as error:
        print(f"poly certs: {error}", file=sys.stderr)
        return 2
    for path in issued.written:
        print(f"wrote {path}")
    for path in issued.kept:
        print(f"kept  {path} (exists; --force re-issues the component certificates)")
    return 0


def _status(settings: config.Settings) -> int:
    from services.cli.probe import health_status

    if not settings.tls.cert_file.exists():
        print(f"poly status: no certificate at {settings.tls.cert_file}; run `poly certs`", file=sys.stderr)
        return 2
    healthy = True
    for name in config.SERVICES:
        state = health_status(settings, name)
        healthy &= state == "SERVING"
        print(f"{name:<14} {settings.peers[name]:<18} {state}")
    return 0 if healthy else 1


def _migration(service: str, message: str) -> int:
    import importlib

    from services.kit import db

    package = importlib.import_module(f"services.{service}")
    directory = Path(package.__file__ or "").with_name("migrations")
    try:
        created = db.generate_revision(directory, message)
    except db.DatabaseError as error:
        print(f"poly migration: {error}", file=sys.stderr)
        return 1
    print(f"wrote {created} — read it before committing")
    return 0


def _bus(action: str, service: str, events: list[str] | None) -> int:
    from sqlalchemy import MetaData

    from services.kit import bus, db

    try:
        settings = config.load(service)
        engine = db.connect(settings.db)
    except (config.ConfigError, db.DatabaseError) as error:
        print(f"poly bus: {error}", file=sys.stderr)
        return 2
    tables = bus.bus_tables(MetaData())
    try:
        status = _bus_action(action, engine, tables, events)
        if action == "redrive" and settings.bus.url and not events:
            moved = bus.redrive_dead_queue(settings.bus.url, service, prefix=settings.bus.prefix)
            dead_queue = bus.dead_queue_name(service, settings.bus.prefix)
            print(f"moved {moved} message(s) from {dead_queue} back to its queue")
        return status
    except SQLAlchemyError as error:
        print(
            f"poly bus: cannot read the {service} outbox ({type(error).__name__}); "
            "has the service run its migrations (started once)?",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()


def _bus_action(action: str, engine: Engine, tables: BusTables, events: list[str] | None) -> int:
    from services.kit import bus

    if action == "status":
        counts = bus.state_counts(engine, tables)
        for state in (bus.PENDING, bus.DELIVERED, bus.DEAD):
            print(f"{state:<10} {counts.get(state, 0)}")
    elif action == "dead":
        letters = bus.dead_letters(engine, tables)
        for letter in letters:
            print(
                f"{letter.event_id}  {letter.event_type}  to {letter.route}  "
                f"aggregate {letter.aggregate_id}  attempts {letter.attempts}  "
                f"last error: {letter.last_error}"
            )
        print(f"{len(letters)} dead letter(s)")
    else:
        count = bus.redrive(engine, tables, event_ids=events)
        print(f"re-driven {count} delivery(ies); the running relay picks them up")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poly", description="Polyservice operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help="create the development CA and component certificates")
    certs.add_argument("--force", action="store_true", help="re-issue component certificates (rotation)")
    commands.add_parser("up", help="start all services, wait for health, supervise until Ctrl-C")
    commands.add_parser("status", help="print each component's health")
    migration = commands.add_parser("migration", help="autogenerate a service's next migration")
    migration.add_argument("service", choices=config.SERVICES)
    migration.add_argument("-m", "--message", required=True, help="what the migration changes")
    bus_parser = commands.add_parser("bus", help="inspect a service's outbox and re-drive dead letters")
    bus_parser.add_argument("action", choices=["status", "dead", "redrive"])
    bus_parser.add_argument("service", choices=config.SERVICES)
    bus_parser.add_argument(
        "--event",
        action="append",
        dest="events",
        metavar="ID",
        help="redrive only this event (repeatable); default: every dead letter",
    )
    args = parser.parse_args(argv)
    try:
        settings = config.load("cli")
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if args.command == "certs":
        return _certs(settings, args.force)
    if args.command == "status":
        return _status(settings)
    if args.command == "migration":
        return _migration(args.service, args.message)
    if args.command == "bus":
        return _bus(args.action, args.service, args.events)
    from services.cli.supervisor import Supervisor

    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
