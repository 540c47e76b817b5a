"""The SQL every store writes the same way: typed binds, keyset pages, filters, insert-if-absent.

Parsing stays where it was: `kit.filters` turns filter text into `Term`s and `kit.paging`
turns page tokens into positions (lists of strings). This module turns those into SQL, once
for every service, on SQLite and PostgreSQL alike. Stores build their own ``select()`` and
pass it through; nothing here knows a service's tables.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

from sqlalchemy import BindParameter, ColumnElement, DateTime, Executable, Select, Table, literal, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute
from sqlalchemy.types import TypeDecorator

from services.kit import paging
from services.kit.db import Executor, connection_of
from services.kit.filters import Term

__all__ = ["SqlColumn", "filter_conditions", "if_absent", "insert_if_absent", "keyset_page", "typed_literal"]

SqlColumn: TypeAlias = ColumnElement[Any] | QueryableAttribute[Any]
"""A table column or a mapped attribute (``OrderRow.create_time``)."""

_S = TypeVar("_S", bound=Select[Any])

_COMPARISONS: Mapping[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_INSERTS: Mapping[str, Callable[[Table], postgresql.Insert | sqlite.Insert]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}
_IF_ABSENT: dict[tuple[str, Table], Executable] = {}
"""``INSERT ... ON CONFLICT DO NOTHING RETURNING <key>`` per dialect and table, built once."""


def typed_literal(column: SqlColumn, value: object) -> BindParameter[Any]:
    """`value` as a bind parameter of `column`'s type.

    Why: a bare value in ``tuple_(...)`` has no column to take its type from, so SQLAlchemy
    would guess one from the Python value and skip the column type's own binding (e.g.
    `kit.db.UtcDateTime`, which stores aware datetimes as naive UTC on SQLite); the
    comparison would then be of text written two ways.
    """
    return literal(value, type_=column.type)


def filter_conditions(terms: Iterable[Term], columns: Mapping[str, SqlColumn]) -> list[ColumnElement[bool]]:
    """One ``WHERE`` condition per parsed filter term (`kit.filters.parse_filter`), comparing
    the column `columns` names for the term's field with the term's value, typed as the column.

    Why here: the parser already refused unknown fields, operators and values, so this is
    a plain lookup; a field or operator missing from `columns` or the six comparisons is the
    service's own mismatch and raises KeyError.
    """
    conditions = []
    for term in terms:
        column = columns[term.field]
        conditions.append(_COMPARISONS[term.operator](column, typed_literal(column, term.value)))
    return conditions


def _position_value(column: SqlColumn, text: str) -> object:
    """A page token's position holds strings; a timestamp column's value was written by
    ``datetime.isoformat()``, every other value as is (a malformed one raises ValueError)."""
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):  # e.g. kit.db.UtcDateTime
        sql_type = sql_type.impl_instance
    if isinstance(sql_type, DateTime):
        stamp = dt.datetime.fromisoformat(text)
        if stamp.tzinfo is None:  # the kit writes aware timestamps only
            raise ValueError(f"naive timestamp {text!r}")
        return stamp.astimezone(dt.UTC)  # as the column binds it; out of range raises here
    text.encode("utf-8")  # a lone surrogate (JSON can carry one) no driver can send
    return text


def _position(keys: Sequence[SqlColumn], after: Sequence[str]) -> list[object]:
    """The values of a page token's position, or INVALID_ARGUMENT: a token's integrity hash
    holds no secret, so a client can forge one, and what it holds must not reach SQL as
    something the database refuses (a server error)."""
    if len(after) != len(keys) or any("\x00" in text for text in after):
        raise paging.invalid_token("not a token this method issued")
    try:
        return [_position_value(key, text) for key, text in zip(keys, after, strict=True)]
    except (ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
        raise paging.invalid_token("not a token this method issued") from None


def keyset_page(
    statement: _S,
    keys: Sequence[SqlColumn],
    *,
    after: Sequence[str] | None,
    descending: bool = False,
    limit: int,
) -> _S:
    """`statement` ordered by `keys`, limited to `limit` rows, starting after the position
    `after` (from `kit.paging.decode_token`; None for the first page).

    `keys` is the sort column followed by a unique column (the id) that breaks its ties, or
    a unique column alone. Why keyset rather than OFFSET: the next page starts strictly
    after the last row served, whatever was inserted or deleted meanwhile, so pages never
    repeat or skip a row and a deep page costs no more than the first. `descending` turns
    both the order and the comparison.
    """
    if after is not None:
        position = [
            typed_literal(key, value) for key, value in zip(keys, _position(keys, after), strict=True)
        ]
        left: SqlColumn = keys[0] if len(keys) == 1 else tuple_(*keys)
        right: ColumnElement[Any] = position[0] if len(keys) == 1 else tuple_(*position)
        statement = statement.where(left < right if descending else left > right)
    ordering = [key.desc() for key in keys] if descending else list(keys)
    return statement.order_by(*ordering).limit(limit)


def insert_if_absent(executor: Executor, entity: type[DeclarativeBase], values: Mapping[str, object]) -> bool:
    """Insert one row of `entity` from `values`, unless a unique constraint (the primary key
    included) already holds a row like it; True when this call inserted it.

    Why ``INSERT ... ON CONFLICT DO NOTHING``: the constraint decides, races with other
    transactions included, in one statement inside the caller's transaction, with no
    savepoint and no error to catch; other integrity errors (a foreign key, a NULL) still
    raise. Pending ORM objects are flushed first, as any ORM statement does. RETURNING, not
    rowcount, tells what happened: psycopg reports -1 for a DO NOTHING insert. Works on the
    two databases the kit runs on, SQLite and PostgreSQL; any other dialect is a ValueError.
    """
    table = entity.__table__
    if not isinstance(table, Table):
        raise TypeError(f"{entity.__name__} is not mapped to one table")
    connection = connection_of(executor)  # pending ORM objects flushed first
    statement = if_absent(table, connection.dialect.name)
    # A Core insert on the table with the values as parameters: four times cheaper than the
    # ORM's bulk-insert path for one row, and the statement is compiled once.
    return connection.execute(statement, dict(values)).first() is not None


def if_absent(table: Table, dialect: str) -> Executable:
    """`insert_if_absent`'s statement for `table` on `dialect` (built once): run it with one
    row's values; it returns the row's first primary-key column when it inserted the row,
    nothing when a unique constraint already holds one like it."""
    statement = _IF_ABSENT.get((dialect, table))
    if statement is None:
        insert = _INSERTS.get(dialect)
        if insert is None:
            raise ValueError(f"insert_if_absent supports {' and '.join(_INSERTS)}, not {dialect}")
        key = table.primary_key.columns[0]
        statement = _IF_ABSENT.setdefault(
            (dialect, table), insert(table).on_conflict_do_nothing().returning(key)
        )
    return statement
