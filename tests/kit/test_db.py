from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, String, inspect, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.kit import config, db
from services.kit.config import DatabaseSettings
from services.kit.domain_errors import Unavailable
from services.kit.errors import to_status
from tests.support.db import orm_transaction


class _Base(DeclarativeBase):
    pass


class _Event(_Base):
    __tablename__ = "event"
    id: Mapped[db.Id]
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(db.UtcDateTime())
    amount: Mapped[db.MinorUnits]
    currency: Mapped[db.CurrencyCode]
    created: Mapped[db.CreatedAt]


def test_sqlite_file_and_folder_are_created_with_wal(tmp_path: Path) -> None:
    engine = db.engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'a' / 'b' / 'x.db'}"))
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / "a" / "b" / "x.db").exists()
    finally:
        engine.dispose()


@pytest.mark.slow
def test_plain_postgresql_urls_get_the_psycopg_driver(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    engine = db.engine(DatabaseSettings(url=plain))
    try:
        assert engine.dialect.driver == "psycopg"
        with engine.connect() as connection:
            assert connection.exec_driver_sql("select 1").scalar() == 1
    finally:
        engine.dispose()


def test_datetimes_come_back_timezone_aware_in_utc(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    moment = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with orm_transaction(engine) as session:
        session.add(_Event(id="e1", kind="k", at=moment, amount=2**40, currency="EUR"))
    with orm_transaction(engine) as session:
        row = session.scalars(select(_Event)).one()
    assert row.at == moment and row.at.tzinfo == dt.UTC
    assert row.created.tzinfo == dt.UTC
    assert row.amount == 2**40


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    with (
        pytest.raises(Exception, match="naive datetime"),
        orm_transaction(engine) as session,
    ):
        session.add(_Event(id="e2", kind="k", at=dt.datetime(2026, 1, 1), amount=1, currency="EUR"))
        session.flush()


def test_a_failed_transaction_leaves_nothing(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    with pytest.raises(RuntimeError), orm_transaction(engine) as session:
        session.add(_Event(id="e3", kind="k", at=dt.datetime.now(dt.UTC), amount=1, currency="EUR"))
        session.flush()
        raise RuntimeError("rolled back")
    with orm_transaction(engine) as session:
        assert session.scalars(select(_Event)).all() == []


def test_transactions_yield_a_repository_per_transaction(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    opened: list[Session] = []

    def repository(connection: Connection) -> Session:
        session = db.orm_session(connection)
        opened.append(session)
        return session

    transaction = db.transactions(engine, repository)
    with transaction() as session:
        session.add(_Event(id="e4", kind="k", at=dt.datetime.now(dt.UTC), amount=1, currency="EUR"))
    with pytest.raises(RuntimeError), transaction() as session:
        session.add(_Event(id="e5", kind="k", at=dt.datetime.now(dt.UTC), amount=1, currency="EUR"))
        session.flush()
        raise RuntimeError("rolled back")
    with transaction() as session:
        assert [row.id for row in session.scalars(select(_Event))] == ["e4"]
    assert len(opened) == len(set(opened)) == 3


def test_after_commit_runs_once_in_order_after_a_commit_and_never_after_a_rollback(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    ran: list[str] = []
    with orm_transaction(engine) as session:
        db.after_commit(session, lambda: ran.append("first"))
        db.after_commit(session, lambda: ran.append("second"))
        db.after_rollback(session, lambda: ran.append("not after a commit"))
        session.add(_Event(id="e6", kind="k", at=dt.datetime.now(dt.UTC), amount=1, currency="EUR"))
        assert ran == [], "nothing before the commit"
    assert ran == ["first", "second"]
    with pytest.raises(RuntimeError), orm_transaction(engine) as session:
        db.after_commit(session, lambda: ran.append("not after a rollback"))
        db.after_rollback(session, lambda: ran.append("rolled back"))
        raise RuntimeError("rolled back")
    with orm_transaction(engine) as session:
        pass  # a later transaction runs nothing left over
    assert ran == ["first", "second", "rolled back"]


def test_a_connection_runs_its_callbacks_and_an_orm_session_over_it_is_written_at_commit(
    engine: Engine,
) -> None:
    _Base.metadata.create_all(engine)
    ran: list[str] = []
    with db.transaction(engine) as connection:
        session = db.orm_session(connection)
        session.add(_event("c1"))  # never flushed by hand: the commit writes it
        db.after_commit(connection, lambda: ran.append("connection"))
        db.after_commit(session, lambda: ran.append("session"))
    assert ran == ["connection", "session"]
    with db.transaction(engine) as connection:
        assert connection.scalars(select(_Event.id)).all() == ["c1"]


def test_an_orm_session_sees_core_writes_and_core_statements_see_its_pending_objects(engine: Engine) -> None:
    _Base.metadata.create_all(engine)
    with db.transaction(engine) as connection:
        session = db.orm_session(connection)
        session.add(_event("c2"))
        # `connection_of` flushes first, as an ORM statement would: the Core read sees it.
        assert db.connection_of(session).scalars(select(_Event.id)).all() == ["c2"]
        connection.execute(update(_Event).where(_Event.id == "c2").values(kind="core"))
        assert session.scalars(select(_Event.kind)).all() == ["core"]


def test_transaction_state_lives_exactly_as_long_as_its_transaction(tmp_path: Path) -> None:
    engine = db.engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'state.db'}"))
    seen: list[dict[str, object]] = []
    try:
        for n in range(3):  # the pool hands the same connection back each time
            with contextlib.suppress(RuntimeError), db.transaction(engine) as connection:
                state = db.transaction_state(connection)
                seen.append(dict(state))
                state["mark"] = n
                assert db.transaction_state(db.orm_session(connection)) is state, "one per transaction"
                if n == 1:
                    raise RuntimeError("rolled back")
        assert seen == [{}, {}, {}], "nothing carried over, after a commit or a rollback"
    finally:
        engine.dispose()


def test_callbacks_outside_a_kit_transaction_are_refused(engine: Engine) -> None:
    # A callback that no transaction of the kit would ever run must not be dropped silently.
    with engine.begin() as connection, pytest.raises(RuntimeError, match=r"not inside a kit\.db transaction"):
        db.after_commit(connection, lambda: None)


def test_a_pooled_connection_carries_nothing_into_its_next_transaction(tmp_path: Path) -> None:
    engine = db.engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'pooled.db'}"))
    _Base.metadata.create_all(engine)
    ran: list[str] = []
    try:
        for n in range(3):  # the pool hands the same connection back each time
            with contextlib.suppress(RuntimeError), db.transaction(engine) as connection:
                db.after_commit(connection, lambda n=n: ran.append(f"commit {n}"))
                db.after_rollback(connection, lambda n=n: ran.append(f"rollback {n}"))
                if n == 1:
                    raise RuntimeError("rolled back")
        assert ran == ["commit 0", "rollback 1", "commit 2"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", config.SERVICES)
def test_migrations_build_exactly_the_models(engine: Engine, service: str) -> None:
    store = importlib.import_module(f"services.{service}.store")
    migrations = Path(importlib.import_module(f"services.{service}").__file__ or "").with_name("migrations")
    db.migrate(engine, migrations)
    assert f"alembic_version_{service}" in inspect(engine).get_table_names()
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": f"alembic_version_{service}"}
        )
        assert compare_metadata(context, store.Base.metadata) == []
    db.migrate(engine, migrations)  # applying again is a no-op


def test_migrating_is_announced_before_it_starts_and_after_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    migrations = Path(importlib.import_module("services.users").__file__ or "").with_name("migrations")
    bound = db.engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'users.db'}"))
    try:
        with caplog.at_level(logging.INFO, logger="poly.db"):
            db.migrate(bound, migrations)
    finally:
        bound.dispose()
    said = [r.getMessage() for r in caplog.records if r.name == "poly.db"]
    assert said == ["migrating users database…", "database migrated"]


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = DatabaseSettings(url=f"postgresql://poly:hunter2@127.0.0.1:{port}/poly")
    with pytest.raises(db.DatabaseError) as caught:
        db.connect(settings)
    message = str(caught.value)
    assert "\n" not in message and "hunter2" not in message
    assert f"postgresql+psycopg://poly:***@127.0.0.1:{port}/poly" in message or "poly:***@" in message


def test_generate_revision_writes_the_next_numbered_script(tmp_path: Path) -> None:
    source = Path(importlib.import_module("services.users").__file__ or "").with_name("migrations")
    directory = tmp_path / "users" / "migrations"
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns("__pycache__"))
    latest = max(int(p.name[:4]) for p in (directory / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    created = db.generate_revision(directory, "Add nothing yet")
    assert created.name == f"{latest + 1:04d}_add_nothing_yet.py"
    text = created.read_text()
    assert f'revision = "{latest + 1:04d}"' in text and f'down_revision = "{latest:04d}"' in text
    upgrade = text.split("def upgrade() -> None:", 1)[1].split("def downgrade", 1)[0]
    code = [
        line.strip() for line in upgrade.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    assert code == ["pass"], "models equal the scripts: nothing to add"


@contextlib.contextmanager
def _write_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, plain connection holding the SQLite database's write lock until it commits."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("COMMIT")
        holder.close()


def _locked_sqlite(tmp_path: Path) -> tuple[Engine, Path]:
    path = tmp_path / "locked.db"
    created = db.engine(DatabaseSettings(url=f"sqlite:///{path}"), busy_timeout_seconds=0.1)
    _Base.metadata.create_all(created)
    return created, path


def _event(event_id: str) -> _Event:
    return _Event(id=event_id, kind="k", at=dt.datetime.now(dt.UTC), amount=1, currency="EUR")


@pytest.mark.slow
def test_a_briefly_locked_sqlite_database_is_retried_until_the_lock_is_free(tmp_path: Path) -> None:
    engine, path = _locked_sqlite(tmp_path)
    try:
        with _write_locked(path) as holder:
            threading.Timer(0.5, holder.execute, ["COMMIT"]).start()  # held for 5 busy timeouts
            started = time.monotonic()
            with orm_transaction(engine, attempts=20, within_seconds=5.0) as session:
                session.add(_event("r1"))
            waited = time.monotonic() - started
        assert waited >= 0.4  # a single attempt gives up after 0.1 s: later ones got through
        with orm_transaction(engine) as session:
            assert [row.id for row in session.scalars(select(_Event))] == ["r1"]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_sqlite_lock_held_too_long_is_unavailable_not_internal(tmp_path: Path) -> None:
    engine, path = _locked_sqlite(tmp_path)
    transaction = db.transactions(engine, db.orm_session, attempts=3)
    try:
        started = time.monotonic()
        with _write_locked(path), pytest.raises(Unavailable) as caught, transaction() as session:
            session.add(_event("r2"))
        assert time.monotonic() - started < 2.0  # three attempts of 0.1 s and their backoff
        assert caught.value.reason == "DATABASE_BUSY"
        assert to_status(caught.value, domain="test.poly.local").code == grpc.StatusCode.UNAVAILABLE
        with orm_transaction(engine) as session:
            assert session.scalars(select(_Event)).all() == []
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_postgresql_serialization_failure_is_unavailable_not_internal(postgres_url: str) -> None:
    engine = db.engine(DatabaseSettings(url=postgres_url))
    _Base.metadata.create_all(engine)
    try:
        with orm_transaction(engine) as session:
            session.add(_event("s1"))
        with pytest.raises(Unavailable) as caught, orm_transaction(engine) as session:
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            assert session.scalars(select(_Event.amount)).all() == [1]  # the snapshot
            with engine.begin() as other:  # a concurrent writer commits after it
                other.execute(update(_Event).where(_Event.id == "s1").values(amount=2))
            session.execute(update(_Event).where(_Event.id == "s1").values(amount=3))
        assert caught.value.reason == "DATABASE_BUSY"
        with orm_transaction(engine) as session:
            assert session.scalars(select(_Event.amount)).all() == [2]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_connection_the_server_drops_mid_transaction_fails_cleanly_and_the_next_one_works(
    postgres_url: str,
) -> None:
    engine = db.engine(DatabaseSettings(url=postgres_url))
    ran: list[str] = []
    try:
        with pytest.raises(DBAPIError) as caught, db.transaction(engine) as connection:
            db.after_rollback(connection, lambda: ran.append("rolled back"))
            db.after_commit(connection, lambda: ran.append("committed"))
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with engine.connect() as other:  # as a database restart would
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid or 0)})")
            connection.exec_driver_sql("SELECT 1")
        assert caught.value.connection_invalidated
        assert ran == ["rolled back"]
        with db.transaction(engine) as connection:  # the pool hands out a live connection
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        engine.dispose()
