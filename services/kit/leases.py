"""Leased work queues: rows that workers claim for a while, in one way for every queue.

The bus relay's deliveries, the notifications dispatcher's notifications and deliveries,
and orders' captures are each a table of rows that fall due; a worker (of any replica)
claims a batch by setting a lease on them, does the work outside any transaction, and
records the outcome, which clears the lease. A worker that dies leaves its lease to run
out, and the rows fall due again. `claim` is the one way to take a batch: it reads the keys
of up to `limit` free rows (skipping rows another claimer holds locked, on PostgreSQL),
then takes them with one UPDATE that re-checks `free`, so of two claimers only one gets a
row even where SKIP LOCKED does not exist (SQLite).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, tuple_, update
from sqlalchemy.orm import Session

from services.kit.sql import SqlColumn

__all__ = ["Claim", "claim"]


@dataclass(frozen=True)
class Claim:
    found: Sequence[Sequence[Any]]
    """The free rows seen: their keys, then the `seen` columns (e.g. the lease they had, to
    tell a lease that ran out without an outcome)."""
    taken: Sequence[Sequence[Any]]
    """What the UPDATE returned (`returning`) for the rows this call took."""


def claim(
    executor: Session | Connection,
    target: Any,
    keys: Sequence[SqlColumn],
    *,
    free: ColumnElement[bool],
    order_by: Sequence[SqlColumn],
    values: Mapping[Any, object],
    limit: int,
    seen: Sequence[SqlColumn] = (),
    returning: Sequence[Any] = (),
    params: Mapping[str, object] | None = None,
) -> Claim:
    """Take up to `limit` rows of `target` (an ORM class or a table) that are `free`, first by
    `order_by`, setting `values` (the lease) on them; inside the caller's transaction.

    `keys` name one row (the primary key, or a unique pair). Why two statements and a
    re-check rather than one UPDATE ... LIMIT: neither database limits an UPDATE, and the
    re-check in the UPDATE's WHERE decides between racing claimers on either. `params` binds
    the bind parameters of a `free` built once (e.g. the claim's current time)."""
    due = select(*keys, *seen).where(free).order_by(*order_by).limit(limit)
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    if bind.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True, of=target)
    found = executor.execute(due, params).all()
    if not found:
        return Claim([], [])
    width = len(keys)
    if width == 1:
        match = keys[0].in_([row[0] for row in found])
    else:
        match = tuple_(*keys).in_([tuple(row[:width]) for row in found])
    statement = update(target).where(match, free).values(values)
    if not returning:
        executor.execute(statement.execution_options(synchronize_session=False), params)
        return Claim(found, [])
    taken = executor.execute(
        statement.returning(*returning).execution_options(synchronize_session=False), params
    )
    return Claim(found, taken.all())
