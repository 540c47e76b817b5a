"""`poly`: the operator's command line.

poly certs [--force]   development CA and one certificate per component
poly up                start every service, wait until healthy, supervise
poly status            each component's health
poly admin create      the first admin account (or make an account admin)
poly keys rotate|list  signing keys of the auth service
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    from services.auth import keys

    encryption_key = settings.auth.key_encryption_key_file
    if keys.ensure_key_encryption_key(encryption_key):
        print(f"wrote {encryption_key} (encrypts the auth service's signing keys)")
    return 0


def _status(settings: config.Settings) -> int:
    from services.cli.probe import edge_status, health_status

    if not settings.tls.cert_file.exists():
        print(f"poly status: no certificate at {settings.tls.cert_file}; run `poly certs`", file=sys.stderr)
        return 2
    healthy = True
    for name in (*config.SERVICES, "gateway"):
        state = edge_status(settings) if name == "gateway" else health_status(settings, name)
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


def _auth_store() -> tuple[Any, Engine]:
    """The auth database (migrated), with an outbox routed as the running service routes."""
    from services.auth import store
    from services.auth.__main__ import MIGRATIONS
    from services.kit import bus, db

    settings = config.load("auth")
    engine = db.connect(settings.db, migrations=MIGRATIONS)
    outbox = bus.Outbox(store.BUS, source="auth", routing=bus.routing(settings.bus, store.BUS))
    return store.AuthStore(db.session_factory(engine), outbox), engine


def _read_password(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise ValueError(
            "there is no terminal to ask for the password on; "
            "pass --password-stdin and write the password to standard input"
        )
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise ValueError("no password given") from None
    if again != first:
        raise ValueError("the two passwords differ")
    return first


def _admin_create(email: str, password_stdin: bool) -> int:
    from services.auth import domain, passwords
    from services.kit import db, errors

    try:
        settings = config.load("auth")
        auth_store, engine = _auth_store()
    except (config.ConfigError, db.DatabaseError) as error:
        print(f"poly admin: {error}", file=sys.stderr)
        return 2
    provider = domain.IdentityProvider(
        auth_store.transaction,
        passwords.Argon2Hasher(settings.auth),
        _NoTokens(),
        settings.auth,
        passwords.password_problem,
    )
    try:
        with auth_store.transaction() as repo:
            found = repo.credentials(domain.normalise_email(email))
        if found is not None:
            identity = provider.change_role(found[0].id, "admin", grant=True)
            print(f"{identity.name} ({identity.email}) is an admin")
        else:
            identity = provider.register(email, _read_password(password_stdin), address=None, roles=["admin"])
            print(f"created {identity.name} ({identity.email}) with the admin role")
    except ValueError as error:
        print(f"poly admin: {error}", file=sys.stderr)
        return 2
    except errors.DomainError as error:
        details = [f"{v.field}: {v.description}" for v in getattr(error, "violations", [])]
        print(f"poly admin: {error}" + "".join(f"\n  {d}" for d in details), file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


class _NoTokens:
    """The CLI registers accounts but never issues tokens."""

    def access_token(self, **_: object) -> str:
        raise RuntimeError("the CLI does not issue tokens")


def _keys(action: str) -> int:
    from services.auth import keys, tokens
    from services.kit import db

    try:
        settings = config.load("auth")
        auth_store, engine = _auth_store()
        encryption_key = keys.load_key_encryption_key(settings.auth.key_encryption_key_file)
    except (config.ConfigError, db.DatabaseError, keys.KeyEncryptionError) as error:
        print(f"poly keys: {error}", file=sys.stderr)
        return 2
    try:
        delay = settings.auth.jwks_min_refresh_seconds
        ring = tokens.KeyRing(auth_store, encryption_key, activation_delay=delay)
        if action == "rotate":
            ring.ensure()
            created = ring.rotate()
            print(f"added signing key {created.kid}; published now, signing new tokens in {delay:g} s")
        for sealed, role in ring.published():
            print(f"{sealed.kid}  {sealed.create_time:%Y-%m-%d %H:%M:%S}Z  {role}")
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gateway"]:  # its own arguments, and no POLY_* settings needed
        from gateway.__main__ import main as gateway_main

        return gateway_main(argv[1:])
    parser = argparse.ArgumentParser(prog="poly", description="Polyservice operator commands.")
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certs", help="create the development CA and component certificates")
    certs.add_argument("--force", action="store_true", help="re-issue component certificates (rotation)")
    commands.add_parser("up", help="start all services, wait for health, supervise until Ctrl-C")
    commands.add_parser("status", help="print each component's health")
    commands.add_parser(
        "gateway", help="serve the HTTP/JSON edge in front of any gRPC backends (poly gateway --help)"
    )
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
    admin = commands.add_parser("admin", help="create the first admin account")
    admin_commands = admin.add_subparsers(dest="action", required=True)
    create = admin_commands.add_parser("create", help="create an admin account, or make an account admin")
    create.add_argument("--email", required=True)
    create.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    keys_parser = commands.add_parser("keys", help="rotate or list the auth service's signing keys")
    keys_parser.add_argument("action", choices=["rotate", "list"])
    args = parser.parse_args(argv)
    try:
        settings = config.load("cli")
    except config.ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    commands_run: dict[str, Callable[[], int]] = {
        "certs": lambda: _certs(settings, args.force),
        "status": lambda: _status(settings),
        "migration": lambda: _migration(args.service, args.message),
        "bus": lambda: _bus(args.action, args.service, args.events),
        "admin": lambda: _admin_create(args.email, args.password_stdin),
        "keys": lambda: _keys(args.action),
    }
    if args.command in commands_run:
        return commands_run[args.command]()
    from services.cli.supervisor import Supervisor

    return Supervisor(settings).run()


if __name__ == "__main__":
    sys.exit(main())
