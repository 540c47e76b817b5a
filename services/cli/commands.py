"""The `poly` commands, each importing what it needs when it runs.

Every command returns an exit status from `services.cli.exits`, and every error it prints
to stderr says what to do next.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.cli.exits import CONFIGURATION_HINT, FAILURE, OK, USAGE
from services.kit import config

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from services.auth.settings import IdentitySettings
    from services.cli.system_settings import SystemSettings
    from services.kit.bus import BusTables

__all__ = [
    "run_admin_create",
    "run_bus",
    "run_bus_declare",
    "run_certs",
    "run_completion",
    "run_keys",
    "run_migrate",
    "run_migration",
    "run_serve",
    "run_status",
    "run_trace",
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


def run_certs(system: SystemSettings, force: bool) -> int:
    from services.auth import keys
    from services.kit import tls

    settings = system.settings
    directory = settings.tls.ca_file.parent
    encryption_key = system.key_encryption_key_file
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


def run_status(settings: config.Settings, components: Sequence[str] = ()) -> int:
    tls_files = (settings.tls.cert_file, settings.tls.key_file, settings.tls.ca_file)
    missing = next((path for path in tls_files if not path.exists()), None)
    if missing is not None:
        return _fail(
            "status",
            f"no certificate at {missing}; run `poly certs` (or `poly up`, which creates them), "
            "or point POLY_TLS_DIR at the directory that holds them",
        )
    import os
    from concurrent.futures import ThreadPoolExecutor

    # grpc-core would print its own line for each refused handshake; the table says it in words.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from services.cli.probe import UNTRUSTED, edge_status, health_status

    def check(name: str) -> str:
        return edge_status(settings) if name == "gateway" else health_status(settings, name)

    names = tuple(dict.fromkeys(components)) or (*config.SERVICES, "gateway")
    with ThreadPoolExecutor(max_workers=len(names)) as pool:  # all at once: a hung one costs 2 s, not 12
        states = list(pool.map(check, names))
    down = [name for name, state in zip(names, states, strict=True) if state != "SERVING"]
    for name, state in zip(names, states, strict=True):
        print(f"{name:<14} {settings.peers[name]:<18} {state}")
    if UNTRUSTED in states:
        return _fail(
            "status",
            "something with another CA's certificate answers on these ports (another `poly up`, with "
            "another POLY_HOME?): stop it, or point POLY_HOME or POLY_TLS_DIR at that system's certificates",
        )
    if down:
        return _fail(
            "status",
            f"not SERVING: {', '.join(down)}; start the system with `poly up` "
            "(its output says why a component stopped)",
        )
    return OK


def _declaration(service: str) -> Any:
    """The `kit.app.Service` a service's ``__main__`` declares."""
    import importlib

    return importlib.import_module(f"services.{service}.__main__").SERVICE


def _migrations(service: str) -> Path:
    return Path(_declaration(service).migrations)


def run_serve(service: str) -> int:
    from services.kit import app

    app.run(_declaration(service))
    return OK


def run_migrate(services: Sequence[str]) -> int:
    import dataclasses

    from services.kit import db

    for service in services:
        try:
            settings = config.load(service)
        except config.ConfigError as error:
            return _fail("migrate", f"{error}\nfix or unset these variables; {CONFIGURATION_HINT}", USAGE)
        wanted = dataclasses.replace(settings.db, migrate_on_start=True)
        try:
            db.connect(wanted, migrations=_migrations(service)).dispose()
        except db.DatabaseError as error:
            return _fail("migrate", f"{service}: {error}; {_database_hint(service)}")
        print(f"{service}: migrated", flush=True)
    return OK


def run_migration(service: str, message: str) -> int:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from services.kit import db

    directory = _migrations(service)
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
        except Exception as error:  # noqa: BLE001 - the broker answered but refused a move: say so
            return _fail(
                "bus",
                f"the broker refused to move a dead letter ({type(error).__name__}: {error}); what was "
                "not moved stays in the dead-letter queue: check `poly bus declare`, then run this again",
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
        counts = {event_id: bus.redrive(engine, tables, event_ids=[event_id]) for event_id in events or ()}
        count = sum(counts.values()) if events else bus.redrive(engine, tables)
        print(f"re-driven {count} delivery(ies); the running relay picks them up")
        unknown = [event_id for event_id, found in counts.items() if not found]
        if unknown:
            return _fail(
                "bus", f"no dead letter with id {', '.join(unknown)}; `poly bus dead <service>` lists them"
            )
    return OK


def run_bus_declare(settings: config.Settings) -> int:
    """Declare the broker topology the contract implies (as every service does at start)."""
    if not settings.bus.url:
        return _fail(
            "bus declare",
            "POLY_BUS_URL is not set: set it to the RabbitMQ URL the services use (amqp://…), "
            f"and POLY_BUS_PREFIX if they use one; {CONFIGURATION_HINT}",
            USAGE,
        )
    import asyncio

    import aio_pika
    import aio_pika.exceptions

    from services.kit.bus import topology

    async def declare() -> topology.Declared:
        connection = await aio_pika.connect(
            settings.bus.url, timeout=10, client_properties={"connection_name": "poly bus declare"}
        )
        async with connection:
            channel = await connection.channel()
            return await topology.declare(channel, settings.bus.prefix, timeout=10)

    broker = config.redact_url(settings.bus.url)
    try:
        declared = asyncio.run(asyncio.wait_for(declare(), 60)).topology
    except aio_pika.exceptions.ChannelPreconditionFailed as error:
        return _fail(
            "bus declare",
            f"the broker at {broker} holds an exchange or queue of the same name with other "
            f"arguments ({error}); delete it (after draining a queue) or choose another POLY_BUS_PREFIX",
        )
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as error:
        return _fail(
            "bus declare",
            f"cannot reach the broker at {broker} ({type(error).__name__}: {error}); start RabbitMQ "
            "or fix POLY_BUS_URL, then run this again",
        )
    for name in declared.exchanges:
        print(f"exchange {name} (topic)")
    print(f"exchange {declared.dead_exchange} (direct)")
    for queue in declared.queues:
        print(f"queue    {queue.name} ({', '.join(f'{k}={v}' for k, v in queue.arguments.items())})")
    for binding in declared.bindings:
        print(f"binding  {binding.exchange} -> {binding.queue} ({binding.routing_key})")
    print(
        f"declared {len(declared.exchanges) + 1} exchanges, {len(declared.queues)} queues and "
        f"{len(declared.bindings)} bindings on {broker}"
    )
    return OK


def _auth_store(settings: config.Settings) -> tuple[Any, Engine]:
    """The auth database (migrated), with an outbox routed as the running service routes."""
    from services.auth import store
    from services.kit import bus, db

    engine = db.connect(settings.db, migrations=_migrations("auth"))
    outbox = bus.Outbox(store.BUS, source="auth", routing=bus.routing(settings.bus))
    return store.AuthStore(engine, outbox), engine


def _open_auth(command: str) -> tuple[config.Settings, IdentitySettings, Any, Engine] | int:
    """The auth service's settings (the kit's and its own), store and engine, or the exit
    status after saying what went wrong."""
    from services.auth import settings as auth_settings
    from services.kit import db

    try:
        settings, own = config.load_with("auth", auth_settings.read)
    except config.ConfigError as error:
        return _fail(command, f"{error}\n{CONFIGURATION_HINT}", USAGE)
    try:
        auth_store, engine = _auth_store(settings)
    except db.DatabaseError as error:
        return _fail(command, f"{error}; {_database_hint('auth')}")
    return settings, own, auth_store, engine


class _UsageError(Exception):
    """What the operator gave (or did not give) cannot be used; the message says what to do."""


def _text(value: str, what: str) -> str:
    """`value`, if it is text: bytes that are not UTF-8 arrive as lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _UsageError(f"{what} is not UTF-8 text; give it as UTF-8") from None
    return value


def _read_password(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            raise _UsageError("the password is not UTF-8 text; give it as UTF-8") from None
        return _text(line.rstrip("\r\n"), "the password")  # a CRLF line ends the same
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

    from services.auth import accounts, domain, passwords, throttle
    from services.kit import domain_errors

    opened = _open_auth("admin")
    if isinstance(opened, int):
        return opened
    settings, own, auth_store, engine = opened
    identities = accounts.Accounts(
        auth_store.transaction,
        passwords.Argon2Hasher(own),
        throttle.Throttle(auth_store.transaction, own),
        passwords.password_problem,
    )
    try:
        with auth_store.transaction() as repo:
            found = repo.credentials(domain.normalise_email(_text(email, "the email")))
        if found is not None:
            identity = identities.change_role(found[0].id, "admin", grant=True)
            print(f"{identity.name} ({identity.email}) is an admin (an existing account: password unchanged)")
        else:
            identity = identities.register(
                email, _read_password(password_stdin), address=None, roles=["admin"]
            )
            print(f"created {identity.name} ({identity.email}) with the admin role")
    except _UsageError as error:
        return _fail("admin", str(error), USAGE)
    except domain_errors.DomainError as error:
        details = [f"{v.field}: {v.description}" for v in getattr(error, "violations", [])]
        advice = "\nfix the above and run the command again" if details else ""
        return _fail("admin", f"{error}" + "".join(f"\n  {d}" for d in details) + advice)
    except SQLAlchemyError as error:
        return _fail("admin", _unreadable("auth", error, settings))
    finally:
        engine.dispose()
    return OK


def run_keys(action: str) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from services.auth import keys, tokens

    opened = _open_auth("keys")
    if isinstance(opened, int):
        return opened
    settings, own, auth_store, engine = opened
    try:
        encryption_key = keys.load_key_encryption_key(own.key_encryption_key_file)
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
            f"{error} (POLY_AUTH_KEY_ENCRYPTION_KEY_FILE={own.key_encryption_key_file} "
            "must name the key the auth service uses)",
        )
    except SQLAlchemyError as error:
        return _fail("keys", _unreadable("auth", error, settings))
    finally:
        engine.dispose()
    return OK


def run_trace(home: Path, what: str | None, *, listing: bool, limit: int, as_json: bool) -> int:
    from services.cli import trace

    return trace.run(home, what, listing=listing, limit=limit, as_json=as_json)


def run_reconcile(since: dt.datetime, until: dt.datetime, *, as_json: bool) -> int:
    """`poly payments reconcile`: the ledger against its provider's records; exit 1 when they
    differ. Reads both sides, changes neither."""
    from sqlalchemy.exc import SQLAlchemyError

    from services.kit import db
    from services.payments import settings as payments_settings
    from services.payments import store
    from services.payments.__main__ import outside_provider
    from services.payments.providers import ProviderError
    from services.payments.reconcile import reconcile, report_lines

    try:
        settings, own = config.load_with("payments", payments_settings.read)
    except config.ConfigError as error:
        return _fail("payments", f"{error}\n{CONFIGURATION_HINT}", USAGE)
    provider = outside_provider(own)
    if provider is None:
        return _fail(
            "payments", "POLY_PAYMENTS_PROVIDER is ledger: no outside provider to reconcile with", USAGE
        )
    try:
        engine = db.connect(settings.db, migrations=_migrations("payments"))
    except db.DatabaseError as error:
        return _fail("payments", f"{error}; {_database_hint('payments')}")
    transactions = db.transactions(engine, lambda connection: store.SqlRepository(connection, None))

    def ledger(name: str, start: dt.datetime, end: dt.datetime) -> list[Any]:
        with db.reading(), transactions() as repo:
            return repo.provider_payments(name, start, end)

    try:
        report = reconcile(provider.name, provider, ledger, since, until)
    except ProviderError as error:
        return _fail("payments", f"{provider.name} could not be asked ({error}); nothing was compared")
    except SQLAlchemyError as error:
        return _fail("payments", _unreadable("payments", error, settings))
    finally:
        engine.dispose()
    for line in report_lines(report, as_json=as_json):
        print(line)
    return FAILURE if report.differences else OK
