"""Read-only transactions (`kit.db.reading`, `reads_middleware`) on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from sqlalchemy import Engine, String, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit import db
from services.kit.config import DatabaseSettings
from services.kit.domain_errors import Unavailable
from services.kit.errors import to_status
from services.kit.types import CallInfo
from tests.support.db import orm_transaction


class _Base(DeclarativeBase):
    pass


class _Note(_Base):
    __tablename__ = "note"
    id: Mapped[db.Id]
    text: Mapped[str] = mapped_column(String(32))


@pytest.fixture
def sessions(engine: Engine) -> Engine:
    _Base.metadata.create_all(engine)
    factory = engine
    with orm_transaction(factory) as session:
        session.add(_Note(id="n1", text="first"))
    return factory


def test_a_read_only_transaction_reads(sessions: Engine) -> None:
    with db.reading(), orm_transaction(sessions) as session:
        assert session.scalars(select(_Note.text)).all() == ["first"]


def test_a_write_in_a_read_only_transaction_is_an_error_and_changes_nothing(
    sessions: Engine,
) -> None:
    with pytest.raises(DBAPIError), db.reading(), orm_transaction(sessions) as session:
        session.add(_Note(id="n2", text="sneaky"))
        session.flush()
    with orm_transaction(sessions) as session:
        assert session.scalars(select(_Note.id)).all() == ["n1"]


def test_a_connection_used_for_reading_writes_again_afterwards(
    sessions: Engine,
) -> None:
    for n in range(3):  # the pool hands the same connections back and forth
        with db.reading(), orm_transaction(sessions) as session:
            session.scalars(select(_Note.id)).all()
        with orm_transaction(sessions) as session:
            session.add(_Note(id=f"w{n}", text="written"))
    with orm_transaction(sessions) as session:
        assert len(session.scalars(select(_Note.id)).all()) == 4


def test_reads_do_not_wait_for_a_writer(sessions: Engine) -> None:
    # A writer holds its transaction (on SQLite: the database's write lock) while a reader
    # reads; before, every transaction took the write lock and the reader queued behind it.
    writing, read_done = threading.Event(), threading.Event()

    def writer() -> None:
        with orm_transaction(sessions) as session:
            session.add(_Note(id="held", text="uncommitted"))
            session.flush()
            writing.set()
            read_done.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert writing.wait(10)
    try:
        with db.reading(), orm_transaction(sessions, attempts=1, within_seconds=0.5) as session:
            assert session.scalars(select(_Note.id)).all() == ["n1"], "the writer's row is not committed"
    finally:
        read_done.set()
        thread.join(10)


def _call(name: str, *, streaming: bool = False) -> CallInfo:
    return CallInfo(f"/poly.test.v1.Things/{name}", "poly.test.v1.Things", name, False, streaming)


def _observed(request: object, context: object) -> bool:
    return db._READING.get()


@pytest.mark.parametrize(
    ("method", "reads"),
    [
        ("GetThing", True),
        ("ListThings", True),
        ("BatchGetThings", True),
        ("CreateThing", False),
        ("UpdateThing", False),
        ("CancelThing", False),
        ("PushEvent", False),
    ],
)
def test_the_method_kind_decides_whether_a_call_reads(method: str, reads: bool) -> None:
    middleware = db.call_middleware()
    assert middleware(None, None, _call(method), _observed) is reads
    assert db._READING.get() is False, "nothing leaks past the call"


def test_a_watch_stream_reads_while_it_streams() -> None:
    def stream(request: object, context: object) -> Iterator[bool]:
        for _ in range(3):
            yield db._READING.get()

    responses = db.call_middleware()(None, None, _call("WatchThing", streaming=True), stream)
    assert list(responses) == [True, True, True]
    assert db._READING.get() is False


class _Context:
    """What the middleware asks of a ``grpc.ServicerContext``: the time the call has left."""

    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


def test_a_call_deadline_bounds_the_retries_of_a_transaction_that_cannot_start(tmp_path: Path) -> None:
    # A writer outside holds SQLite's write lock for longer than the call may wait.
    path = tmp_path / "locked.db"
    engine = db.engine(DatabaseSettings(url=f"sqlite:///{path}"), busy_timeout_seconds=0.05)
    _Base.metadata.create_all(engine)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def handler(request: object, context: object) -> None:
        with orm_transaction(engine, attempts=50, within_seconds=30.0) as session:
            session.add(_Note(id="late", text="never"))

    try:
        started = time.monotonic()
        with pytest.raises(Unavailable) as refused:
            db.call_middleware()(None, _Context(0.4), _call("CreateThing"), handler)
        assert time.monotonic() - started < 0.4, "answered before the call's deadline, not after 50 tries"
    finally:
        holder.execute("COMMIT")
        holder.close()
        engine.dispose()
    assert refused.value.reason == "DATABASE_BUSY"
    status = to_status(refused.value, domain="test.poly.local")
    assert status.code == grpc.StatusCode.UNAVAILABLE
    found = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    delays = [d for d in found.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(delays) == 1, "the client is told when to try again"
