"""Login limits under concurrency, against a real auth process.

A burst of wrong passwords (or client secrets) for one identity must not get more
verifications than the throttling limit: the limit is checked and the attempt reserved in
one transaction, and the attempt is settled after the verification. A burst of password
checks across many accounts must not grow the process without bound: argon2 runs at most
``budget // memory cost`` at once, and the rest are answered RESOURCE_EXHAUSTED. No call of
a burst is answered INTERNAL (a busy database is retried, and at worst UNAVAILABLE).

Every call comes with the gateway's certificate and its own ``x-forwarded-for``, so only the
per-account (per-client) limit applies. Argon2 costs what it does by default in memory
(64 MiB a verification, one pass), with a budget of two at once.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from poly.auth.v1 import auth_service_pb2 as pb
from poly.auth.v1 import resources_pb2
from tests.support.identity import PASSWORD, Deployment, auth_alone, bearer
from tests.support.status import Refusal, refusal

pytestmark = pytest.mark.slow

BURST = 50
LIMIT = 3
LIMITS = {
    "POLY_AUTH_LOGIN_FAILURES_PER_ACCOUNT": str(LIMIT),
    "POLY_AUTH_LOGIN_FAILURES_PER_ADDRESS": "1000",
    "POLY_AUTH_LOGIN_WINDOW_SECONDS": "600",
}
MEMORY_KIB = 65536
BUDGET_KIB = 2 * MEMORY_KIB
REAL_ARGON2 = {
    "POLY_AUTH_ARGON2_TIME_COST": "1",
    "POLY_AUTH_ARGON2_MEMORY_KIB": str(MEMORY_KIB),
    "POLY_AUTH_ARGON2_PARALLELISM": "1",
    "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB": str(BUDGET_KIB),
}
PEAK_HEADROOM_KIB = 64 * 1024
"""Allowed above the resting size plus the budget: thread stacks, buffers, allocator slack.
Measured here: a resting auth of 94 MiB peaked at 210-229 MiB over the burst (at most 7 MiB
past the budget); without the bound it peaked at 2.0 GiB."""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with auth_alone(request, tmp_path_factory.mktemp("auth-limits"), {**LIMITS, **REAL_ARGON2}) as deployment:
        yield deployment


def _address() -> str:
    return f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:8]}"


def _burst(call: Callable[[], object], count: int = BURST) -> list[Refusal | None]:
    """`call` from `count` threads released at once: each answer's refusal, None for OK."""
    start_line = threading.Barrier(count)

    def one(_: int) -> Refusal | None:
        start_line.wait()
        try:
            call()
        except grpc.RpcError as error:
            return refusal(error)
        return None

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def _tally(answers: list[Refusal | None]) -> Counter[tuple[str, str]]:
    return Counter(("OK", "") if a is None else (a.code.name, a.reason) for a in answers)


def _age_attempts(system: Deployment, key: str, seconds: float) -> None:
    """Move the recorded attempts of `key` `seconds` into the past (as time passing would)."""
    engine = create_engine(system.settings("auth").db.url)
    try:
        with engine.begin() as connection:
            rows = connection.execute(
                text("SELECT id, fail_time FROM login_failure WHERE key = :key"), {"key": key}
            ).all()
            for row_id, fail_time in rows:
                moment = (
                    fail_time if isinstance(fail_time, dt.datetime) else dt.datetime.fromisoformat(fail_time)
                )
                connection.execute(
                    text("UPDATE login_failure SET fail_time = :t WHERE id = :id"),
                    {"t": moment - dt.timedelta(seconds=seconds), "id": row_id},
                )
    finally:
        engine.dispose()


def _recorded_failures(system: Deployment, key: str) -> int:
    engine = create_engine(system.settings("auth").db.url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM login_failure WHERE key = :key AND pending_until IS NULL"),
                    {"key": key},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def _assert_at_most_the_limit_verified(answers: list[Refusal | None], wrong: str) -> int:
    tally = _tally(answers)
    verified = tally[("UNAUTHENTICATED", wrong)]
    throttled = (
        tally[("RESOURCE_EXHAUSTED", "LOGIN_THROTTLED")]
        + tally[("RESOURCE_EXHAUSTED", "CREDENTIAL_CHECKS_BUSY")]
    )
    assert 1 <= verified <= LIMIT, tally
    assert verified + throttled == BURST, tally  # nothing else: no INTERNAL, no UNAVAILABLE
    assert all(a.retry_after for a in answers if a is not None and a.code.name == "RESOURCE_EXHAUSTED")
    return verified


def _refused_as(call: Callable[[], object]) -> Refusal:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refusal(refused.value)


def _use_up(call: Callable[[], object], verified: int, wrong: str) -> None:
    """The rest of the allowance (attempts the burst lost to a busy hasher), one at a time."""
    for _ in range(LIMIT - verified):
        assert _refused_as(call).reason == wrong


def test_a_burst_of_wrong_passwords_verifies_at_most_the_limit(system: Deployment) -> None:
    _user, email = system.register()
    gateway = system.auth(as_="gateway")
    wrong = pb.LoginRequest(email=email, password="not-the-password!")
    answers = _burst(lambda: gateway.Login(wrong, metadata=[("x-forwarded-for", _address())], timeout=30))
    verified = _assert_at_most_the_limit_verified(answers, "INVALID_CREDENTIALS")
    assert _recorded_failures(system, f"account:{email}") == verified
    _use_up(
        lambda: gateway.Login(wrong, metadata=[("x-forwarded-for", _address())], timeout=10),
        verified,
        "INVALID_CREDENTIALS",
    )
    right = pb.LoginRequest(email=email, password=PASSWORD)
    locked = _refused_as(lambda: gateway.Login(right, metadata=[("x-forwarded-for", _address())], timeout=10))
    assert (locked.code, locked.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")
    assert locked.retry_after is not None and 590 <= locked.retry_after <= 600
    _age_attempts(system, f"account:{email}", 601)  # the lock-out ends with the window
    assert gateway.Login(right, metadata=[("x-forwarded-for", _address())], timeout=10).access_token


def test_a_burst_of_wrong_client_secrets_verifies_at_most_the_limit(system: Deployment) -> None:
    admin = system.create_admin(f"root-{uuid.uuid4().hex[:6]}@example.com")
    client_id = f"burst-{uuid.uuid4().hex[:6]}"
    created = system.auth().CreateClient(
        pb.CreateClientRequest(client_id=client_id, client=resources_pb2.Client(scopes=["orders.read"])),
        metadata=bearer(admin),
        timeout=10,
    )
    gateway = system.auth(as_="gateway")
    wrong = pb.IssueClientTokenRequest(client_id=client_id, client_secret="w" * 40)
    answers = _burst(
        lambda: gateway.IssueClientToken(wrong, metadata=[("x-forwarded-for", _address())], timeout=30)
    )
    verified = _assert_at_most_the_limit_verified(answers, "INVALID_CLIENT")
    assert _recorded_failures(system, f"client:{client_id}") == verified
    _use_up(
        lambda: gateway.IssueClientToken(wrong, metadata=[("x-forwarded-for", _address())], timeout=10),
        verified,
        "INVALID_CLIENT",
    )
    right = pb.IssueClientTokenRequest(client_id=client_id, client_secret=created.client_secret)
    locked = _refused_as(
        lambda: gateway.IssueClientToken(right, metadata=[("x-forwarded-for", _address())], timeout=10)
    )
    assert (locked.code, locked.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "LOGIN_THROTTLED")
    _age_attempts(system, f"client:{client_id}", 601)
    assert gateway.IssueClientToken(
        right, metadata=[("x-forwarded-for", _address())], timeout=10
    ).access_token


def test_a_reservation_left_by_a_crash_expires(system: Deployment) -> None:
    """A process that dies between reserving an attempt and settling it leaves pending rows:
    they count while their lease lasts, and not after."""
    _user, email = system.register()
    key = f"account:{email}"
    engine = create_engine(system.settings("auth").db.url)
    now = dt.datetime.now(dt.UTC)
    naive = engine.dialect.name == "sqlite"  # the kit stores naive UTC there

    def when(seconds: float) -> dt.datetime:
        moment = now + dt.timedelta(seconds=seconds)
        return moment.replace(tzinfo=None) if naive else moment

    try:
        with engine.begin() as connection:
            for _ in range(LIMIT):
                connection.execute(
                    text(
                        "INSERT INTO login_failure (key, fail_time, pending_until) VALUES (:key, :t, :until)"
                    ),
                    {"key": key, "t": when(-1), "until": when(300)},
                )
        gateway = system.auth(as_="gateway")
        right = pb.LoginRequest(email=email, password=PASSWORD)
        locked = _refused_as(
            lambda: gateway.Login(right, metadata=[("x-forwarded-for", _address())], timeout=10)
        )
        assert locked.reason == "LOGIN_THROTTLED"  # in flight: they count
        with engine.begin() as connection:
            connection.execute(
                text("UPDATE login_failure SET pending_until = :until WHERE key = :key"),
                {"key": key, "until": when(-1)},
            )
        assert gateway.Login(right, metadata=[("x-forwarded-for", _address())], timeout=10).access_token
    finally:
        engine.dispose()


def _status_kib(pid: int, field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert found, field
    return int(found.group(1))


def test_a_burst_of_password_checks_stays_within_the_memory_budget(system: Deployment) -> None:
    """50 logins for 50 unknown accounts from 50 addresses: none is throttled, each needs a
    verification; two run at once, the rest are refused as busy rather than queued."""
    gateway = system.auth(as_="gateway")
    pid = system.processes["auth"].popen.pid
    resting = _status_kib(pid, "VmRSS")

    def login() -> None:
        unknown = pb.LoginRequest(email=f"{uuid.uuid4().hex[:10]}@example.com", password="not-it-at-all!")
        gateway.Login(unknown, metadata=[("x-forwarded-for", _address())], timeout=30)

    answers = _burst(login)
    peak = _status_kib(pid, "VmHWM")
    tally = _tally(answers)
    busy = [a for a in answers if a is not None and a.reason == "CREDENTIAL_CHECKS_BUSY"]
    assert tally[("UNAUTHENTICATED", "INVALID_CREDENTIALS")] + len(busy) == BURST, tally
    assert peak <= resting + BUDGET_KIB + PEAK_HEADROOM_KIB, (resting, peak, tally)
    assert busy, tally
    assert all(a.code == grpc.StatusCode.RESOURCE_EXHAUSTED and a.retry_after == 1.0 for a in busy), tally
