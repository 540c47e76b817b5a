"""Read-only transactions (`kit.db.reading`, `reads_middleware`) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, String, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from services.kit import db
from services.kit.types import CallInfo


class _Base(DeclarativeBase):
    pass


class _Note(_Base):
    __tablename__ = "note"
    id: Mapped[db.Id]
    text: Mapped[str] = mapped_column(String(32))


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    _Base.metadata.create_all(engine)
    factory = db.session_factory(engine)
    with db.transaction(factory) as session:
        session.add(_Note(id="n1", text="first"))
    return factory


def test_a_read_only_transaction_reads(sessions: sessionmaker[Session]) -> None:
    with db.reading(), db.transaction(sessions) as session:
        assert session.scalars(select(_Note.text)).all() == ["first"]


def test_a_write_in_a_read_only_transaction_is_an_error_and_changes_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with pytest.raises(DBAPIError), db.reading(), db.transaction(sessions) as session:
        session.add(_Note(id="n2", text="sneaky"))
        session.flush()
    with db.transaction(sessions) as session:
        assert session.scalars(select(_Note.id)).all() == ["n1"]


def test_a_connection_used_for_reading_writes_again_afterwards(
    sessions: sessionmaker[Session],
) -> None:
    for n in range(3):  # the pool hands the same connections back and forth
        with db.reading(), db.transaction(sessions) as session:
            session.scalars(select(_Note.id)).all()
        with db.transaction(sessions) as session:
            session.add(_Note(id=f"w{n}", text="written"))
    with db.transaction(sessions) as session:
        assert len(session.scalars(select(_Note.id)).all()) == 4


def test_reads_do_not_wait_for_a_writer(sessions: sessionmaker[Session]) -> None:
    # A writer holds its transaction (on SQLite: the database's write lock) while a reader
    # reads; before, every transaction took the write lock and the reader queued behind it.
    writing, read_done = threading.Event(), threading.Event()

    def writer() -> None:
        with db.transaction(sessions) as session:
            session.add(_Note(id="held", text="uncommitted"))
            session.flush()
            writing.set()
            read_done.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert writing.wait(10)
    try:
        with db.reading(), db.transaction(sessions, attempts=1, within_seconds=0.5) as session:
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
    middleware = db.reads_middleware()
    assert middleware(None, None, _call(method), _observed) is reads
    assert db._READING.get() is False, "nothing leaks past the call"


def test_a_watch_stream_reads_while_it_streams() -> None:
    def stream(request: object, context: object) -> Iterator[bool]:
        for _ in range(3):
            yield db._READING.get()

    responses = db.reads_middleware()(None, None, _call("WatchThing", streaming=True), stream)
    assert list(responses) == [True, True, True]
    assert db._READING.get() is False
