"""The `poly` commands, each importing what it needs when it runs.

Every command returns an exit status from `services.cli.exits`, and every error it prints
to stderr says what to do next.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.exits import CONFIGURATION_HINT, FAILURE, OK, USAGE
from services.kit import config

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from services.kit.bus import BusTables

__all__ = [
    "run_admin_create",
    "run_bus",
    "run_certs",
    "run_completion",
    "run_keys",
    "run_migration",
    "run_status",
]


def _fail(command: str, message: str, status: int = FAILURE) -> int:
    print(f"poly {command}: {message}", file=sys.stderr)
    return status


def _database_hint(service: str) -> str:
    return (
        f"check POLY_{service.upper()}_DATABASE_URL ({CONFIGURATION_HINT}) and that the database server is up"
    )


def _unreadable(service: str, error: Exception, settings: config.Settings) -> str:
    """A database that opens but cannot be read: most often, one never migrated."""
    reason = (str(getattr(error, "orig", None) or error).strip().splitlines() or [""])[0]
    if settings.db.migrate_on_start:
        fix = f"start the {service} service once (`poly up`), which migrates it"
    else:
        fix = f"start the {service} service once with POLY_DB_MIGRATE=true (it is false), which migrates it"
    return (
        f"cannot read the {service} database ({type(error).__name__}: {reason}); if the service never "
        f"ran, {fix}; otherwise {_database_hint(service)}"
    )


def run_completion(parser: argparse.ArgumentParser, shell: str) -> int:
    import shtab

    print(shtab.complete(parser, shell=shell), end="")
    return OK


def run_certs(settings: config.Settings, force: bool) -> int:
    from services.auth import keys
    from services.kit import tls

    directory = settings.tls.ca_file.parent
    encryption_key = settings.auth.key_encryption_key_file
    try:
        issued = tls.ensure_certificates(
            directory,
            config.COMPONENTS,
            force=force,
            trust_domain=settings.tls.trust_domain,
            namespace=settings.tls.namespace,
        )
        wrote_key = keys.ensure_key_encryption_key(encryption_key)
    except tls.CertificateError as error:
        return _fail("certs", str(error))
    except ValueError as error:  # a ca.crt or ca.key that does not parse
        return _fail(
            "certs",
            f"cannot read the CA in {directory} ({error}); restore ca.crt and ca.key, "
            "or remove the directory to start a new CA",
        )
    except OSError as error:
        return _fail(
            "certs",
            f"cannot write {error.filename or directory} ({error.strerror}); make it writable, "
            "or point POLY_HOME (or POLY_TLS_DIR) at a directory you can write",
        )
    for path in issued.written:
        print(f"wrote {path}")
    for path in issued.kept:
        print(f"kept  {path} (exists; --force re-issues the component certificates)")
    if wrote_key:
        print(f"wrote {encryption_key} (encrypts the auth service's signing keys)")
    return OK


def run_status(settings: config.Settings) -> int:
    tls_files = (settings.tls.cert_file, settings.tls.key_file, settings.tls.ca_file)
    missing = next((path for path in tls_files if not path.exists()), None)
    if missing is not None:
        return _fail(
            "status",
            f"no certificate at {missing}; run `poly certs` (or `poly up`, which creates them), "
            "or point POLY_TLS_DIR at the directory that holds them",
        )
    from concurrent.futures import ThreadPoolExecutor

    from services.cli.probe import edge_status, health_status

    def check(name: str) -> str:
        return edge_status(settings) if name == "gateway" else health_status(settings, name)

    names = (*config.SERVICES, "gateway")
    with ThreadPoolExecutor(max_workers=len(names)) as pool:  # all at once: a hung one costs 2 s, not 12
        states = list(pool.map(check, names))
    down = [name for name, state in zip(names, states, strict=True) if state != "SERVING"]
    for name, state in zip(names, states, strict=True):
        print(f"{name:<14} {settings.peers[name]:<18} {state}")
    if down:
        return _fail(
            "status",
            f"not SERVING: {', '.join(down)}; start the system with `poly up` "
            "(its output says why a component stopped)",
        )
    return OK


def run_migration(service: str, message: str) -> int:
    import importlib

    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from services.kit import db

    package = importlib.import_module(f"services.{service}")
    directory = Path(package.__file__ or "").with_name("migrations")
    try:
        created = db.generate_revision(directory, message)
    except (db.DatabaseError, CommandError, SQLAlchemyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return _fail(
            "migration",
            f"{reason}; the scripts in {directory} must apply to an empty database: "
            "fix the one at fault, then run this again",
        )
    print(f"wrote {created} — read it before committing")
    return OK


def run_bus(action: str, service: str, events: list[str] | None) -> int:
    from sqlalchemy import MetaData
    from sqlalchemy.exc import SQLAlchemyError

    from services.kit import bus, db

    try:
        settings = config.load(service)
    except config.ConfigError as error:
        return _fail("bus", f"{error}\n{CONFIGURATION_HINT}", USAGE)
    try:
        engine = db.connect(settings.db)
    except db.DatabaseError as error:
        return _fail("bus", f"{error}; {_database_hint(service)}")
    tables = bus.bus_tables(MetaData())
    try:
        status = _bus_action(action, engine, tables, events)
    except SQLAlchemyError as error:
        return _fail("bus", _unreadable(service, error, settings))
    finally:
        engine.dispose()
    if action == "redrive" and settings.bus.url and not events:
        try:
            moved = bus.redrive_dead_queue(settings.bus.url, service, prefix=settings.bus.prefix)
        except OSError as error:  # the broker refuses or is down (aio-pika's errors are OSErrors)
            return _fail(
                "bus",
                f"cannot reach the broker at {config.redact_url(settings.bus.url)} ({error}); the outbox "
                "was re-driven, the broker's dead-letter queue was not: start RabbitMQ or fix "
                "POLY_BUS_URL, then run this again",
            )
        dead_queue = bus.dead_queue_name(service, settings.bus.prefix)
        print(f"moved {moved} message(s) from {dead_queue} back to its queue")
    return status


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
    return OK


def _auth_store(settings: config.Settings) -> tuple[Any, Engine]:
    """The auth database (migrated), with an outbox routed as the running service routes."""
    from services.auth import store
    from services.auth.__main__ import MIGRATIONS
    from services.kit import bus, db

    engine = db.connect(settings.db, migrations=MIGRATIONS)
    outbox = bus.Outbox(store.BUS, source="auth", routing=bus.routing(settings.bus, store.BUS))
    return store.AuthStore(db.session_factory(engine), outbox), engine


def _open_auth(command: str) -> tuple[config.Settings, Any, Engine] | int:
    """The auth settings, store and engine, or the exit status after saying what went wrong."""
    from services.kit import db

    try:
        settings = config.load("auth")
    except config.ConfigError as error:
        return _fail(command, f"{error}\n{CONFIGURATION_HINT}", USAGE)
    try:
        auth_store, engine = _auth_store(settings)
    except db.DatabaseError as error:
        return _fail(command, f"{error}; {_database_hint('auth')}")
    return settings, auth_store, engine


class _UsageError(Exception):
    """What the operator gave (or did not give) cannot be used; the message says what to do."""


def _read_password(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise _UsageError(
            "there is no terminal to ask for the password on; "
            "pass --password-stdin and write the password to standard input"
        )
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise _UsageError("no password given; type one, or pass --password-stdin") from None
    if again != first:
        raise _UsageError("the two passwords differ; run the command again")
    return first


def run_admin_create(email: str, password_stdin: bool) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from services.auth import domain, passwords
    from services.kit import errors

    opened = _open_auth("admin")
    if isinstance(opened, int):
        return opened
    settings, auth_store, engine = opened
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
    except _UsageError as error:
        return _fail("admin", str(error), USAGE)
    except errors.DomainError as error:
        details = [f"{v.field}: {v.description}" for v in getattr(error, "violations", [])]
        advice = "\nfix the above and run the command again" if details else ""
        return _fail("admin", f"{error}" + "".join(f"\n  {d}" for d in details) + advice)
    except SQLAlchemyError as error:
        return _fail("admin", _unreadable("auth", error, settings))
    finally:
        engine.dispose()
    return OK


class _NoTokens:
    """The CLI registers accounts but never issues tokens."""

    def access_token(self, **_: object) -> str:
        raise RuntimeError("the CLI does not issue tokens")


def run_keys(action: str) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from services.auth import keys, tokens

    opened = _open_auth("keys")
    if isinstance(opened, int):
        return opened
    settings, auth_store, engine = opened
    try:
        encryption_key = keys.load_key_encryption_key(settings.auth.key_encryption_key_file)
        delay = settings.auth.jwks_min_refresh_seconds
        ring = tokens.KeyRing(auth_store, encryption_key, activation_delay=delay)
        if action == "rotate":
            ring.ensure()
            created = ring.rotate()
            print(f"added signing key {created.kid}; published now, signing new tokens in {delay:g} s")
        for sealed, role in ring.published():
            print(f"{sealed.kid}  {sealed.create_time:%Y-%m-%d %H:%M:%S}Z  {role}")
    except keys.KeyEncryptionError as error:
        return _fail(
            "keys",
            f"{error} (POLY_AUTH_KEY_ENCRYPTION_KEY_FILE={settings.auth.key_encryption_key_file} "
            "must name the key the auth service uses)",
        )
    except SQLAlchemyError as error:
        return _fail("keys", _unreadable("auth", error, settings))
    finally:
        engine.dispose()
    return OK
