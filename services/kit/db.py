"""One SQLAlchemy engine per service, shared column shapes, and migrations on start.

SQLite (a file under the state directory) is the default; any SQLAlchemy URL works, and a
plain ``postgresql://`` URL is given the psycopg 3 driver. Access is synchronous, to fit the
thread-pool server: each RPC opens one connection and one transaction (`transaction`; an
`orm_session` over it where a store maps rows to objects); a store hands its domain
`transactions(engine, repository)`, each yielding a repository.
Calls to read methods (Get, List, Watch: `call_middleware`, declared once by the method's
AIP kind) run read-only transactions: no write lock on SQLite, ``READ ONLY`` on PostgreSQL;
a call's deadline bounds the retries of a transaction that cannot start, and what cannot
start in time is UNAVAILABLE with a RetryInfo.
Contention is handled here, once for every service: a transaction that cannot start because
others hold the database (SQLite's write lock past its busy timeout, a full pool) is started
again with backoff, a bounded number of times within a bounded time; contention that
outlasts that, or that strikes inside a transaction (a PostgreSQL deadlock or serialization
failure), raises `errors.Unavailable` (``DATABASE_BUSY``, UNAVAILABLE), never INTERNAL.
Each service keeps its Alembic scripts in ``services/<name>/migrations``; `migrate` brings
a database to head, and the scripts' ``env.py`` is one call to `run_migrations_env`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import sqlite3
import tempfile
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from alembic import command, context
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config as AlembicConfig
from alembic.util import CommandError
from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    MetaData,
    String,
    create_engine,
    event,
    func,
    text,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from services.kit import telemetry
from services.kit.backoff import backoff_seconds
from services.kit.config import DatabaseSettings, redact_url
from services.kit.domain_errors import Unavailable
from services.kit.types import CallInfo, Handler, Middleware

_log = logging.getLogger("poly.db")

_R = TypeVar("_R")

__all__ = [
    "CreatedAt",
    "pool_gauges",
    "DatabaseError",
    "Executor",
    "CurrencyCode",
    "Id",
    "MinorUnits",
    "UpdatedAt",
    "READ_METHOD_PREFIXES",
    "UtcDateTime",
    "after_commit",
    "after_rollback",
    "connect",
    "connect_or_exit",
    "connection_of",
    "downgrade",
    "engine",
    "generate_revision",
    "migrate",
    "naming_convention",
    "orm_session",
    "call_middleware",
    "reading",
    "run_migrations_env",
    "transaction",
    "transaction_state",
    "transactions",
]

naming_convention: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names every service's `MetaData` uses, so migrations name them the same."""


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware datetimes on every backend; SQLite stores them as naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware value")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


Id = Annotated[str, mapped_column(String(64), primary_key=True)]
"""An opaque identifier (the last segment of a resource name)."""
CreatedAt = Annotated[dt.datetime, mapped_column(UtcDateTime(), server_default=func.now())]
UpdatedAt = Annotated[
    dt.datetime, mapped_column(UtcDateTime(), server_default=func.now(), onupdate=func.now())
]
MinorUnits = Annotated[int, mapped_column(BigInteger())]
"""Money: integer minor units (cents), always next to a `CurrencyCode`."""
CurrencyCode = Annotated[str, mapped_column(String(3))]


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry, *, busy_timeout_ms: int) -> None:
    # pysqlite would BEGIN only before the first INSERT/UPDATE/DELETE: reads ahead of it fall
    # outside the transaction, and a SAVEPOINT ahead of it opens one that its RELEASE commits.
    # Take transaction control from the driver; `_sqlite_begin` starts each one instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms:d}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE takes the write lock up front (waiting up to busy_timeout): a transaction that
    # reads and then writes can never find its snapshot stale, so SQLite transactions are
    # serializable, as the services' read-check-write code expects. A read-only transaction
    # (`reading`) begins DEFERRED and takes no write lock: reads never queue behind writes or
    # each other (WAL), and query_only makes a write in one an error, as on PostgreSQL.
    read_only = bool(connection.get_execution_options().get(_READ_ONLY))
    # Straight to the driver: these carry no parameters and return no rows, and SQLAlchemy's
    # statement machinery around them cost 6-8% of a small transaction's CPU (issue 20). An
    # error is wrapped as SQLAlchemy's would be, so `transaction` can tell contention apart.
    driver: Any = connection.connection.driver_connection  # checked out: never None here
    statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
    try:
        if connection.info.get(_READ_ONLY) != read_only:
            driver.execute(f"PRAGMA query_only = {int(read_only)}")
            connection.info[_READ_ONLY] = read_only
        driver.execute(statement)
    except sqlite3.Error as error:
        wrapped = DBAPIError.instance(statement, None, error, sqlite3.Error, dialect=connection.dialect)
        raise wrapped from error


_READ_ONLY = "poly_read_only"
_READING: ContextVar[bool] = ContextVar("poly_db_reading", default=False)
_DEADLINE: ContextVar[float | None] = ContextVar("poly_db_deadline", default=None)
"""When the call running now must be answered (``time.monotonic()``); None: no deadline."""
_ANSWER_SECONDS = 0.05
"""Kept of a call's deadline to answer UNAVAILABLE in, rather than let the deadline pass."""

READ_METHOD_PREFIXES = ("Get", "List", "BatchGet", "Search", "Watch")
"""The AIP standard methods that only read (AIP-131, 132, 231, and watches): a call to one
runs its transactions read-only (`call_middleware`)."""


@contextmanager
def reading() -> Iterator[None]:
    """Transactions begun in this block only read: DEFERRED and query_only on SQLite,
    ``READ ONLY`` on PostgreSQL. A write in one is an error, never a silent lock."""
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


def call_middleware() -> Middleware:
    """The server middleware that tells the database of the call: its deadline (transactions
    that cannot start are retried only while it leaves time to answer) and whether it reads
    (a read method, `READ_METHOD_PREFIXES`, runs inside `reading`, streams included), so no
    handler has to remember either."""

    def read_only_stream(responses: Iterator[Any]) -> Iterator[Any]:
        with reading():
            yield from responses

    def middleware(request: Any, context: Any, call: CallInfo, proceed: Handler) -> Any:
        remaining = context.time_remaining() if context is not None else None
        token = _DEADLINE.set(None if remaining is None else time.monotonic() + remaining)
        try:
            if not call.name.startswith(READ_METHOD_PREFIXES):
                return proceed(request, context)
            with reading():
                result = proceed(request, context)
            return read_only_stream(result) if call.response_streaming else result
        finally:
            _DEADLINE.reset(token)

    return middleware


def engine(settings: DatabaseSettings, *, busy_timeout_seconds: float = 5.0) -> Engine:
    """The service's engine; creates the SQLite file's folder when needed.

    `busy_timeout_seconds`: on SQLite, how long one attempt to start a transaction waits for
    the write lock (`transaction` makes a few attempts).
    """
    url = make_url(settings.url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        created = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds}
        )
        pragmas = functools.partial(_sqlite_pragmas, busy_timeout_ms=max(0, int(busy_timeout_seconds * 1000)))
        event.listen(created, "connect", pragmas)
        event.listen(created, "begin", _sqlite_begin)
        return created
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


_READ_ONLY_OPTIONS = {_READ_ONLY: True, "postgresql_readonly": True}

_CONTENDED_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
"""PostgreSQL: serialization failure, deadlock detected, lock not available."""
_SQLITE_BUSY_CODES = frozenset({5, 6})
"""SQLITE_BUSY ("database is locked") and SQLITE_LOCKED (primary codes)."""
_RETRY_BASE_SECONDS = 0.05
_RETRY_MAX_SECONDS = 1.0


def _contended(error: BaseException) -> bool:
    """Whether `error` says "other transactions are in the way" rather than "this failed"."""
    if isinstance(error, PoolTimeout):  # every pooled connection is in use
        return True
    if not isinstance(error, DBAPIError):
        return False
    original = error.orig
    sqlstate = getattr(original, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate in _CONTENDED_SQLSTATES
    code = getattr(original, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _SQLITE_BUSY_CODES


def _busy(error: Exception) -> Unavailable:
    _log.warning("database busy: %s", _first_line(error))
    return Unavailable("DATABASE_BUSY", "the database is busy; try again", retry_after_seconds=1.0)


def _begin(bound: Engine, *, attempts: int, within_seconds: float) -> Connection:
    """A connection whose transaction has started (on SQLite: holds the write lock)."""
    started = time.monotonic()
    deadline = _DEADLINE.get()
    if deadline is not None:  # the call's deadline bounds the retries too
        within_seconds = min(within_seconds, deadline - started - _ANSWER_SECONDS)
    attempt = 0
    while True:
        attempt += 1
        connection: Connection | None = None
        try:
            connection = bound.connect()
            if _READING.get():
                connection.execution_options(**_READ_ONLY_OPTIONS)
            # BEGIN now, before the caller's code runs, so it can be retried.
            connection.begin()
            return connection
        except (DBAPIError, PoolTimeout) as error:
            if connection is not None:
                connection.close()
            if not _contended(error):
                raise
            delay = backoff_seconds(attempt, base=_RETRY_BASE_SECONDS, maximum=_RETRY_MAX_SECONDS)
            if attempt >= attempts or time.monotonic() - started + delay > within_seconds:
                raise _busy(error) from error
            time.sleep(delay)
        except BaseException:
            if connection is not None:
                connection.close()
            raise


class _Noted:
    """What the code of one transaction asked to run around its end (`after_commit`,
    `after_rollback`, and the flush of each `orm_session` over it)."""

    __slots__ = ("before_commit", "on_commit", "on_rollback", "state")

    def __init__(self) -> None:
        self.before_commit: list[Callable[[], None]] = []
        self.on_commit: list[Callable[[], None]] = []
        self.on_rollback: list[Callable[[], None]] = []
        self.state: dict[str, Any] = {}


_NOTED: weakref.WeakKeyDictionary[Connection, _Noted] = weakref.WeakKeyDictionary()
"""The notes of each connection's transaction while it is open (`transaction` takes them out).
Not in the connection's ``info``: that is the pooled DBAPI connection's, and reading it after
the connection was invalidated (the database restarted) would open a new one."""


@contextmanager
def transaction(bound: Engine, *, attempts: int = 3, within_seconds: float = 10.0) -> Iterator[Connection]:
    """One connection, one transaction: committed on success, rolled back on any exception.

    The unit of work is a Core `Connection`, not an ORM `Session`: statements run on it
    directly, at about three quarters of the Session's cost per call; a store that maps rows
    to objects opens an `orm_session` over it. The transaction starts before the body runs;
    if the database is contended then, the start is tried up to `attempts` times, a new
    attempt only within `within_seconds` of the first. Contention past that, or inside the
    body or its commit (which cannot be re-run from here), raises `Unavailable`
    (``DATABASE_BUSY``).
    """
    connection = _begin(bound, attempts=max(1, attempts), within_seconds=within_seconds)
    noted = _NOTED[connection] = _Noted()
    try:
        try:
            yield connection
            for flush in noted.before_commit:
                flush()
            connection.commit()
        except BaseException:
            try:
                connection.rollback()
            finally:
                for callback in noted.on_rollback:
                    callback()
            raise
    except (DBAPIError, PoolTimeout) as error:
        if not _contended(error):
            raise
        raise _busy(error) from error
    finally:
        _NOTED.pop(connection, None)
        connection.close()
    for callback in noted.on_commit:
        callback()


def transactions(
    bound: Engine,
    repository: Callable[[Connection], _R],
    *,
    attempts: int = 3,
    within_seconds: float = 10.0,
) -> Callable[[], AbstractContextManager[_R]]:
    """What a store hands its domain: each call opens one `transaction` and yields
    ``repository(connection)`` over it (events published through it join that transaction)."""

    @contextmanager
    def opened() -> Iterator[_R]:
        with transaction(bound, attempts=attempts, within_seconds=within_seconds) as connection:
            yield repository(connection)

    return opened


def orm_session(connection: Connection) -> Session:
    """An ORM session over the `transaction` `connection` is in, for a store that maps rows to
    objects: what it holds is flushed before that transaction commits, and it never commits
    or ends the transaction itself."""
    noted = _noted(connection)
    session = Session(bind=connection, expire_on_commit=False, join_transaction_mode="rollback_only")
    noted.before_commit.append(session.flush)
    noted.on_commit.append(session.close)
    noted.on_rollback.append(session.close)
    return session


Executor = Session | Connection
"""What the code of a transaction runs statements on: its `Connection`, or an `orm_session`."""


def connection_of(executor: Executor) -> Connection:
    """The connection `executor`'s statements run on (pending ORM changes flushed first, as
    an ORM statement would, so a Core statement after them sees them)."""
    if isinstance(executor, Connection):
        return executor
    if executor.new or executor.dirty or executor.deleted:
        executor.flush()
    return executor.connection()


def after_commit(executor: Executor, callback: Callable[[], None]) -> None:
    """Run `callback` once the `transaction` `executor` is in commits; never if it rolls back.

    For work that must only follow a durable change: waking a worker for a row just written,
    telling watchers of a changed resource. Callbacks run in the order they were given."""
    _noted(connection_of(executor)).on_commit.append(callback)


def after_rollback(executor: Executor, callback: Callable[[], None]) -> None:
    """Run `callback` if the `transaction` `executor` is in rolls back (forgetting what it noted)."""
    _noted(connection_of(executor)).on_rollback.append(callback)


def transaction_state(executor: Executor) -> dict[str, Any]:
    """A dict that lives exactly as long as the `transaction` `executor` is in: for what its
    code gathers once per transaction (one wake-up, one notice of every row it changed)."""
    return _noted(connection_of(executor)).state


def _noted(connection: Connection) -> _Noted:
    noted = _NOTED.get(connection)
    if noted is None:
        raise RuntimeError("not inside a kit.db transaction: open one with kit.db.transaction")
    return noted


class DatabaseError(RuntimeError):
    """The database cannot be opened or migrated; the message is safe to log."""


def _alembic_config(directory: Path, bound: Engine) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(directory))
    config.attributes["engine"] = bound
    # Each service records its own revision, so services sharing one database never mix them.
    config.attributes["version_table"] = f"alembic_version_{directory.parent.name}"
    return config


def migrate(bound: Engine, directory: Path, revision: str = "head") -> None:
    """Apply the Alembic scripts in ``services/<name>/migrations`` to `bound` up to `revision`."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # two lines of ours instead of Alembic's chatter
    _log.info("migrating %s database…", directory.parent.name)
    command.upgrade(_alembic_config(directory, bound), revision)
    _log.info(
        "database migrated",
        extra={"database": redact_url(bound.url.render_as_string(False)), "revision": revision},
    )


def downgrade(bound: Engine, directory: Path, revision: str) -> None:
    """Undo the scripts `migrate` applied to `bound` down to `revision` (an operator's way back
    after a release is rolled back; each script's downgrade says what it cannot restore)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    command.downgrade(_alembic_config(directory, bound), revision)
    _log.info(
        "database downgraded",
        extra={"database": redact_url(bound.url.render_as_string(False)), "revision": revision},
    )


def generate_revision(directory: Path, message: str) -> Path:
    """Autogenerate the next migration of a service from its models (for a person to read).

    The current scripts are applied to a scratch SQLite database first, so the new
    revision holds exactly the difference between the models and the existing scripts.
    """
    with tempfile.TemporaryDirectory() as scratch:
        bound = engine(DatabaseSettings(url=f"sqlite:///{Path(scratch) / 'scratch.db'}"))
        try:
            migrate(bound, directory)
            config = _alembic_config(directory, bound)
            existing = sorted(p.name for p in (directory / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
            number = int(existing[-1][:4]) + 1 if existing else 1
            slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "change"
            script = command.revision(
                config,
                message=message,
                autogenerate=True,
                rev_id=f"{number:04d}",
            )
        finally:
            bound.dispose()
    assert script is not None and not isinstance(script, list)
    created = Path(script.path)
    target = created.with_name(f"{number:04d}_{slug}.py")
    created.rename(target)
    return target


def connect(settings: DatabaseSettings, *, migrations: Path | None = None) -> Engine:
    """The service's engine, migrated to head when `migrations` is given and enabled.

    Raises `DatabaseError` with a one-line, password-free message when the URL is unusable,
    the server refuses, or a migration fails.
    """
    shown = redact_url(settings.url)
    try:
        bound = engine(settings)
    except (SQLAlchemyError, ValueError, ImportError, OSError) as error:
        raise DatabaseError(f"cannot use database {shown}: {type(error).__name__}") from None
    try:
        if migrations is not None and settings.migrate_on_start:
            migrate(bound, migrations)
        else:
            with bound.connect():
                pass
    except (SQLAlchemyError, CommandError, ValueError, OSError) as error:
        bound.dispose()
        raise DatabaseError(f"cannot open or migrate database {shown}: {_first_line(error)}") from None
    return bound


def connect_or_exit(settings: DatabaseSettings, *, migrations: Path | None = None) -> Engine:
    """`connect`, or log the one-line reason and exit with status 1 (for entry points).
    The engine's pool is reported in the process's metrics (``poly_db_pool_*``)."""
    try:
        bound = connect(settings, migrations=migrations)
    except DatabaseError as error:
        _log.error(str(error))
        raise SystemExit(1) from None
    observed = telemetry.installed()
    if observed is not None:
        observed.add_gauges(pool_gauges(bound))
    return bound


def pool_gauges(bound: Engine) -> dict[str, tuple[str, Callable[[], float | None]]]:
    """The pool's state, read at scrape time (pools without a size, e.g. SQLite's in-memory
    StaticPool, report nothing)."""
    pool: Any = bound.pool

    def read(method: str, low: float | None = None) -> Callable[[], float | None]:
        return lambda: max(low, getattr(pool, method)()) if low is not None else getattr(pool, method)()

    return {
        "poly_db_pool_checked_out": ("Connections in use by a transaction.", read("checkedout")),
        "poly_db_pool_overflow": ("Connections open beyond the pool's size.", read("overflow", 0)),
        "poly_db_pool_size": ("Connections the pool keeps open.", read("size")),
    }


def _first_line(error: Exception) -> str:
    # Driver messages can span many lines (SQL, parameters): keep the reason only.
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Autogenerate would write `services.kit.db.UtcDateTime(timezone=True)` without importing it.
    if kind == "type" and isinstance(item, UtcDateTime):
        autogen_context.imports.add("from services.kit.db import UtcDateTime")
        return "UtcDateTime()"
    return False


def run_migrations_env(target_metadata: MetaData) -> None:
    """Body of every service's ``migrations/env.py``: run online against the given engine."""
    bound: Engine = context.config.attributes["engine"]
    with bound.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=context.config.attributes["version_table"],
            render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
            render_item=_render_item,
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas (or migrate jobs) starting together take turns: the next one reads
                # the version the first committed and has nothing left to do.
                key = zlib.crc32(context.config.attributes["version_table"].encode())
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            context.run_migrations()
        connection.commit()
