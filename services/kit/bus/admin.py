"""Operator views of the outbox: dead letters, backlog, and re-driving dead deliveries."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update

from services.kit.bus.tables import DEAD, PENDING, BusTables

__all__ = ["DeadLetter", "dead_letters", "redrive", "state_counts"]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    position: int
    event_id: str
    event_type: str
    aggregate_id: str
    route: str
    attempts: int
    last_error: str | None


def dead_letters(engine: Engine, tables: BusTables, *, limit: int = 100) -> list[DeadLetter]:
    d, o = tables.delivery, tables.outbox
    query = (
        select(
            d.c.position,
            o.c.event_id,
            d.c.event_type,
            d.c.aggregate_id,
            d.c.route,
            d.c.attempts,
            d.c.last_error,
        )
        .join(o, o.c.position == d.c.position)
        .where(d.c.state == DEAD)
        .order_by(d.c.position)
        .limit(limit)
    )
    with engine.connect() as connection:
        return [DeadLetter(*row) for row in connection.execute(query)]


def redrive(
    engine: Engine,
    tables: BusTables,
    *,
    event_ids: Sequence[str] | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Make dead deliveries pending again with fresh attempts; all of them, or those of `event_ids`."""
    d, o = tables.delivery, tables.outbox
    condition = d.c.state == DEAD
    if event_ids is not None:
        condition &= d.c.position.in_(select(o.c.position).where(o.c.event_id.in_(list(event_ids))))
    with engine.begin() as connection:
        result = connection.execute(
            update(d)
            .where(condition)
            .values(
                state=PENDING,
                attempts=0,
                next_attempt_at=now or dt.datetime.now(dt.UTC),
                lease_owner=None,
                lease_until=None,
            )
        )
    return int(result.rowcount)


def state_counts(engine: Engine, tables: BusTables) -> dict[str, int]:
    """``{"pending": n, "delivered": n, "dead": n}`` over every delivery."""
    d = tables.delivery
    with engine.connect() as connection:
        rows = connection.execute(select(d.c.state, func.count()).group_by(d.c.state)).all()
    return {str(state): int(count) for state, count in rows}
