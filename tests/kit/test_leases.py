"""One way to claim leased work (services/kit/leases.py), on SQLite and PostgreSQL; and when to
claim (`ClaimTimes`)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    or_,
    select,
)

from services.kit import leases
from tests.support.clock import MonotonicClock

_NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
_LATER = _NOW + dt.timedelta(seconds=30)


def _jobs(engine: Engine, rows: list[tuple[int, str, dt.datetime, dt.datetime | None]]) -> Table:
    metadata = MetaData()
    jobs = Table(
        "jobs",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("kind", String(8), primary_key=True),
        Column("due_at", DateTime(timezone=True), nullable=False),
        Column("lease_owner", String(32)),
        Column("lease_until", DateTime(timezone=True)),
    )
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            jobs.insert(),
            [{"id": i, "kind": k, "due_at": due, "lease_until": lease} for i, k, due, lease in rows],
        )
    return jobs


def _free(jobs: Table) -> object:
    return and_(jobs.c.due_at <= _NOW, or_(jobs.c.lease_until.is_(None), jobs.c.lease_until < _NOW))


def _claim(engine: Engine, jobs: Table, owner: str, limit: int) -> leases.Claim:
    queue = leases.Queue(
        jobs,
        [jobs.c.id, jobs.c.kind],
        free=_free(jobs),  # type: ignore[arg-type]
        order_by=[jobs.c.due_at, jobs.c.id],
        lease={jobs.c.lease_owner: bindparam("owner"), jobs.c.lease_until: _LATER},
        seen=[jobs.c.lease_owner],
        returning=[jobs.c.id],
    )
    with engine.begin() as connection:
        return queue.claim(connection, limit, {"owner": owner})


def _owners(engine: Engine, jobs: Table) -> dict[tuple[int, str], str | None]:
    with engine.connect() as connection:
        return {(r.id, r.kind): r.lease_owner for r in connection.execute(select(jobs))}


def test_a_claim_takes_the_oldest_free_rows_and_leaves_the_rest(engine: Engine) -> None:
    early = _NOW - dt.timedelta(minutes=5)
    jobs = _jobs(
        engine,
        [
            (1, "a", early, None),
            (2, "a", early + dt.timedelta(minutes=1), None),
            (3, "b", early, _NOW + dt.timedelta(seconds=5)),  # leased by a live worker
            (4, "b", _NOW + dt.timedelta(minutes=1), None),  # not due yet
            (5, "a", early + dt.timedelta(minutes=2), _NOW - dt.timedelta(seconds=1)),  # lease ran out
        ],
    )
    first = _claim(engine, jobs, "w1", limit=2)
    assert [tuple(row[:2]) for row in first.found] == [(1, "a"), (2, "a")]
    assert sorted(row[0] for row in first.taken) == [1, 2]
    second = _claim(engine, jobs, "w2", limit=10)
    assert [tuple(row[:2]) for row in second.found] == [(5, "a")]
    owners = _owners(engine, jobs)
    assert owners == {(1, "a"): "w1", (2, "a"): "w1", (3, "b"): None, (4, "b"): None, (5, "a"): "w2"}
    assert _claim(engine, jobs, "w3", limit=10).found == [], "nothing is free until a lease ends"


def test_racing_claimers_never_take_one_row_twice(engine: Engine) -> None:
    jobs = _jobs(engine, [(i, "a", _NOW - dt.timedelta(seconds=i), None) for i in range(40)])
    taken: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def work(owner: str) -> None:
        start.wait()
        mine: list[int] = []
        for _ in range(20):
            mine += [int(row[0]) for row in _claim(engine, jobs, owner, limit=3).taken]
        taken[owner] = mine

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    everything = [job for mine in taken.values() for job in mine]
    assert sorted(everything) == list(range(40)), "every row taken exactly once"
    owners = _owners(engine, jobs)
    assert all(owners[(job, "a")] == owner for owner, mine in taken.items() for job in mine)


def test_claim_times_poll_and_claim_when_a_retry_falls_due() -> None:
    clock = MonotonicClock()
    times = leases.ClaimTimes(5.0, gap=0.5, clock=clock)
    assert times.due(), "the first claim at once"
    times.claiming()
    assert not times.due() and times.seconds_left() == 5.0, "then every poll"
    assert times.retry_at(clock.now + 2.0), "a retry sooner than the poll moves the claim"
    assert times.seconds_left() == pytest.approx(2.0 + leases.ClaimTimes.MARGIN)
    assert not times.retry_at(clock.now + 3.0), "a later one does not"
    clock.now += 2.1
    assert times.due()
    times.claiming()
    assert times.seconds_left() == pytest.approx(0.9 + leases.ClaimTimes.MARGIN), "the next retry's claim"
    clock.now += 1.0
    times.claiming()
    assert times.seconds_left() == 5.0, "no retry left: the poll's"


def test_claim_times_share_one_claim_between_retries_falling_due_together() -> None:
    # An outage: many retries recorded at once, their backoffs jittered apart.
    clock = MonotonicClock(100.0)  # where 10 ms steps add up exactly
    times = leases.ClaimTimes(5.0, gap=0.5, clock=clock)
    times.claiming()
    start = clock.now
    for tenth in range(1, 11):
        times.retry_at(clock.now + tenth / 100)
    claims = 0
    for _ in range(200):  # 2 s in 10 ms steps
        clock.now += 0.01
        if times.due():
            times.claiming()
            claims += 1
    assert claims == 1, "ten retries within 0.1 s: one claim, the gap keeping them together"
    at_the_gaps_end = start + 0.5
    assert times.seconds_left() == pytest.approx(at_the_gaps_end + 5.0 - clock.now), "then the poll"


def test_claim_times_after_a_failed_claim_try_again_within_the_gap() -> None:
    clock = MonotonicClock()
    times = leases.ClaimTimes(5.0, gap=0.5, clock=clock)
    times.claiming()
    times.failed()
    assert times.seconds_left() == 0.5
