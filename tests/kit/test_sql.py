"""The stores' shared SQL, run against real SQLite and real PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

import datetime as dt
import operator
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, ForeignKey, String, Table, delete, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.kit import db
from services.kit.domain_errors import InvalidArgument
from services.kit.filters import ORDERED, FieldSpec, Term, parse_filter, text_value, timestamp_value
from services.kit.sql import filter_conditions, if_absent, insert_if_absent, keyset_page, typed_literal
from tests.support.db import orm_transaction


class _Base(DeclarativeBase):
    pass


class _Item(_Base):
    __tablename__ = "item"
    id: Mapped[db.Id]
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[dt.datetime] = mapped_column(db.UtcDateTime())
    code: Mapped[str | None] = mapped_column(String(16), unique=True)


class _Tag(_Base):
    __tablename__ = "tag"
    id: Mapped[db.Id]
    item_id: Mapped[str] = mapped_column(ForeignKey("item.id"))


_START = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
_PLUS_TWO = dt.timezone(dt.timedelta(hours=2))
_COLUMNS: dict[str, Any] = {"kind": _Item.kind, "at": _Item.at}

# Twelve rows: each time is shared by three of them and each kind by four, so every sort
# key has ties that only the id breaks.
_ROWS = [(f"i{n:02d}", "abc"[n % 3], _START + dt.timedelta(hours=n % 4)) for n in range(12)]


@pytest.fixture
def bound(engine: Engine) -> Engine:
    _Base.metadata.create_all(engine)
    return engine


def _seed(bound: Engine, rows: Sequence[tuple[str, str, dt.datetime]]) -> None:
    shuffled = list(rows)
    random.Random(7).shuffle(shuffled)  # insertion order must not be what orders the pages
    with orm_transaction(bound) as session:
        session.execute(delete(_Item))
        session.add_all(_Item(id=i, kind=kind, at=at) for i, kind, at in shuffled)


def _ids(bound: Engine, statement: Any) -> list[str]:
    with orm_transaction(bound) as session:
        return [row.id for row in session.scalars(statement)]


# -- typed_literal ------------------------------------------------------------------------


def test_typed_literal_binds_a_value_as_its_column_does(bound: Engine) -> None:
    _seed(bound, _ROWS)
    moment = _ROWS[1][2].astimezone(_PLUS_TWO)  # the same instant, written in another zone
    position = tuple_(typed_literal(_Item.at, moment), typed_literal(_Item.id, "i01"))
    found = _ids(bound, select(_Item).where(tuple_(_Item.at, _Item.id) == position))
    assert found == ["i01"]
    assert isinstance(typed_literal(_Item.at, moment).type, db.UtcDateTime)


# -- filter_conditions --------------------------------------------------------------------

_LATER = (_START + dt.timedelta(hours=1)).astimezone(_PLUS_TWO)


@pytest.mark.parametrize(
    "terms",
    [
        [],
        [Term("kind", "=", "a")],
        [Term("kind", "!=", "a")],
        [Term("at", "<", _LATER)],
        [Term("at", "<=", _LATER)],
        [Term("at", ">", _LATER)],
        [Term("at", ">=", _LATER)],
        [Term("at", "=", _LATER)],
        [Term("at", "!=", _LATER)],
        [Term("kind", "=", "b"), Term("at", ">=", _LATER)],
    ],
    ids=["none", "text =", "text !=", "time <", "time <=", "time >", "time >=", "time =", "time !=", "and"],
)
def test_filter_conditions_select_the_rows_the_terms_describe(bound: Engine, terms: list[Term]) -> None:
    _seed(bound, _ROWS)
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "=": operator.eq,
        "!=": operator.ne,
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
    }
    values = {"kind": 1, "at": 2}
    expected = [
        row[0] for row in _ROWS if all(comparisons[t.operator](row[values[t.field]], t.value) for t in terms)
    ]
    statement = select(_Item).where(*filter_conditions(terms, _COLUMNS)).order_by(_Item.id)
    assert _ids(bound, statement) == expected


def test_filter_conditions_take_what_parse_filter_returns(bound: Engine) -> None:
    _seed(bound, _ROWS)
    fields = {"kind": FieldSpec(text_value), "at": FieldSpec(timestamp_value, ORDERED)}
    terms = parse_filter('kind = c AND at > "2026-03-01T14:30:00+02:00"', fields)
    statement = select(_Item).where(*filter_conditions(terms, _COLUMNS)).order_by(_Item.id)
    assert _ids(bound, statement) == ["i02", "i05", "i11"]  # not i08, at 12:00


@pytest.mark.parametrize(
    "term",
    [Term("code", "=", "x"), Term("kind", ":", "x")],
    ids=["field without a column", "operator without a comparison"],
)
def test_filter_conditions_refuse_what_they_cannot_compare(term: Term) -> None:
    with pytest.raises(KeyError):
        filter_conditions([term], _COLUMNS)


# -- keyset_page --------------------------------------------------------------------------

_KEYS: dict[str, tuple[Sequence[Any], Callable[[_Item], list[str]], Callable[[Any], Any]]] = {
    "time then id": ((_Item.at, _Item.id), lambda r: [r.at.isoformat(), r.id], lambda r: (r[2], r[0])),
    "text then id": ((_Item.kind, _Item.id), lambda r: [r.kind, r.id], lambda r: (r[1], r[0])),
    "id alone": ((_Item.id,), lambda r: [r.id], lambda r: r[0]),
}


def _walk(
    bound: Engine,
    keys: Sequence[Any],
    position: Callable[[_Item], list[str]],
    *,
    size: int,
    descending: bool,
) -> list[str]:
    """Every page in turn, each starting after the last row of the one before (at most 50
    pages, so that pages which never end fail the test instead of hanging it)."""
    served: list[str] = []
    after: list[str] | None = None
    for _ in range(50):
        with orm_transaction(bound) as session:
            statement = keyset_page(select(_Item), keys, after=after, descending=descending, limit=size)
            page = list(session.scalars(statement))
        assert len(page) <= size
        served += [row.id for row in page]
        if len(page) < size:
            return served
        after = position(page[-1])
    pytest.fail(f"the pages never ended; served {served[:20]}...")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 12, 13], ids=lambda n: f"size {n}")
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("keys", list(_KEYS), ids=list(_KEYS))
def test_keyset_pages_over_ties_serve_every_row_once_in_order(
    bound: Engine, keys: str, descending: bool, size: int
) -> None:
    _seed(bound, _ROWS)
    columns, position, sort_key = _KEYS[keys]
    expected = [row[0] for row in sorted(_ROWS, key=sort_key, reverse=descending)]
    assert _walk(bound, columns, position, size=size, descending=descending) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(min_value=0, max_value=2)), min_size=0, max_size=15
    ),
    size=st.integers(min_value=1, max_value=6),
    descending=st.booleans(),
)
def test_keyset_pages_match_a_sort_in_python(
    bound: Engine, rows: list[tuple[str, int]], size: int, descending: bool
) -> None:
    seeded = [(f"r{n:02d}", kind, _START + dt.timedelta(minutes=m)) for n, (kind, m) in enumerate(rows)]
    _seed(bound, seeded)
    columns, position, sort_key = _KEYS["time then id"]
    expected = [row[0] for row in sorted(seeded, key=sort_key, reverse=descending)]
    assert _walk(bound, columns, position, size=size, descending=descending) == expected


# A page token's hash holds no secret: a client can forge one holding any position. Whatever
# it holds is INVALID_ARGUMENT before any SQL runs, never a database error (INTERNAL).
_FORGED = {
    "not a timestamp": ["yesterday", "i01"],
    "a naive timestamp": ["2026-03-01T12:00:00", "i01"],
    "too few values": ["2026-03-01T12:00:00+00:00"],
    "too many values": ["2026-03-01T12:00:00+00:00", "i01", "extra"],
    "a NUL character": ["2026-03-01T12:00:00+00:00", "i\x0001"],
    "a time before year 1 in UTC": ["0001-01-01T00:00:00+01:00", "i01"],
    "a time after year 9999 in UTC": ["9999-12-31T23:59:59-01:00", "i01"],
    "a lone surrogate": ["2026-03-01T12:00:00+00:00", "i\ud800"],
}


@pytest.mark.parametrize("after", list(_FORGED.values()), ids=list(_FORGED))
def test_a_forged_position_is_an_invalid_page_token(after: list[str]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        keyset_page(select(_Item), (_Item.at, _Item.id), after=after, limit=5)
    assert refused.value.reason == "PAGE_TOKEN_INVALID"


# -- insert_if_absent ---------------------------------------------------------------------


def _item(item_id: str, *, kind: str = "a", code: str | None = None) -> dict[str, object]:
    return {"id": item_id, "kind": kind, "at": _START, "code": code}


def _stored(bound: Engine) -> list[tuple[str, str, str | None]]:
    with orm_transaction(bound) as session:
        return [(row.id, row.kind, row.code) for row in session.scalars(select(_Item).order_by(_Item.id))]


def test_insert_if_absent_inserts_once_and_keeps_the_first_row(bound: Engine) -> None:
    with orm_transaction(bound) as session:
        assert insert_if_absent(session, _Item, _item("x", kind="first")) is True
        assert insert_if_absent(session, _Item, _item("x", kind="same transaction")) is False
    with orm_transaction(bound) as session:
        assert insert_if_absent(session, _Item, _item("x", kind="later transaction")) is False
    assert _stored(bound) == [("x", "first", None)]


def test_insert_if_absent_yields_to_any_unique_constraint(bound: Engine) -> None:
    with orm_transaction(bound) as session:
        assert insert_if_absent(session, _Item, _item("x", code="c1")) is True
        assert insert_if_absent(session, _Item, _item("y", code="c1")) is False
        assert insert_if_absent(session, _Item, _item("z", code=None)) is True
        assert insert_if_absent(session, _Item, _item("w", code=None)) is True  # NULLs never conflict
    assert [row[0] for row in _stored(bound)] == ["w", "x", "z"]


def test_a_conflict_leaves_the_transaction_usable(bound: Engine) -> None:
    with orm_transaction(bound) as session:
        assert insert_if_absent(session, _Item, _item("x")) is True
    with orm_transaction(bound) as session:
        assert insert_if_absent(session, _Item, _item("x")) is False  # the transaction's first write
        session.add(_Item(id="y", kind="a", at=_START))
    assert [row[0] for row in _stored(bound)] == ["x", "y"]


def test_insert_if_absent_commits_nothing_by_itself(bound: Engine) -> None:
    with pytest.raises(RuntimeError), orm_transaction(bound) as session:
        assert insert_if_absent(session, _Item, _item("x")) is True  # the transaction's first write
        raise RuntimeError("rolled back")
    assert _stored(bound) == []


def test_other_integrity_errors_still_raise(bound: Engine) -> None:
    with pytest.raises(IntegrityError), orm_transaction(bound) as session:
        insert_if_absent(session, _Tag, {"id": "t", "item_id": "no such item"})


def test_pending_objects_are_written_first(bound: Engine) -> None:
    with orm_transaction(bound) as session:
        session.add(_Item(id="x", kind="a", at=_START))
        assert insert_if_absent(session, _Tag, {"id": "t", "item_id": "x"}) is True
    with orm_transaction(bound) as session:
        assert session.scalar(select(func.count()).select_from(_Tag)) == 1


def test_racing_inserts_of_one_row_insert_it_once(bound: Engine) -> None:
    racers = 4
    start = threading.Barrier(racers)
    results: list[bool] = []

    def race(kind: str) -> None:
        start.wait(timeout=30)
        with orm_transaction(bound) as session:
            inserted = insert_if_absent(session, _Item, _item("x", kind=kind))
        results.append(inserted)

    threads = [threading.Thread(target=race, args=(f"racer {n}",)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * (racers - 1) + [True]
    assert len(_stored(bound)) == 1


def test_insert_if_absent_refuses_other_dialects() -> None:
    table = _Item.__table__
    assert isinstance(table, Table)
    with pytest.raises(ValueError, match="mysql"):
        if_absent(table, "mysql")  # what insert_if_absent runs, on the connection's dialect


def test_if_absent_is_one_statement_per_table_and_database_for_core_tables(
    bound: Engine,
) -> None:
    table = _Item.__table__
    assert isinstance(table, Table)
    with orm_transaction(bound) as session:
        dialect = session.get_bind().dialect.name
        statement = if_absent(table, dialect)
        assert if_absent(table, dialect) is statement, "built once"
        assert session.execute(statement, _item("x")).first() == ("x",)
        assert session.execute(statement, _item("x", kind="again")).first() is None
    assert _stored(bound) == [("x", "a", None)]
    with pytest.raises(ValueError, match="not mysql"):
        if_absent(table, "mysql")
