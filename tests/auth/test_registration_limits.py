"""Registration under load, against a real auth process with real argon2 costs.

Register is open to anyone through the edge, so a flood of it must not lock out logins: a
taken email is answered before any password is hashed, registrations are limited per client
address (taken emails included), and hashes may hold at most half of argon2's slots, so
verification keeps the rest. Calls come with the gateway's certificate and an
``x-forwarded-for`` of their own unless the test is about one address. Argon2 costs what it
does by default in memory (64 MiB, one pass), with a budget of two at once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from sqlalchemy import create_engine, text

from poly.auth.v1 import auth_service_pb2 as pb
from tests.support.identity import PASSWORD, Deployment, auth_alone
from tests.support.status import Refusal, refusal

pytestmark = pytest.mark.slow

FLOOD = 40
FLOOD_SECONDS = 3.0
LOGINS = 10
LIMIT = 5
WINDOW = 600
SETTINGS = {
    "POLY_AUTH_REGISTRATIONS_PER_ADDRESS": str(LIMIT),
    "POLY_AUTH_LOGIN_WINDOW_SECONDS": str(WINDOW),
    "POLY_AUTH_ARGON2_TIME_COST": "1",
    "POLY_AUTH_ARGON2_MEMORY_KIB": "65536",
    "POLY_AUTH_ARGON2_PARALLELISM": "1",
    "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB": str(2 * 65536),
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def system(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with auth_alone(request, tmp_path_factory.mktemp("auth-registration"), SETTINGS) as deployment:
        yield deployment


def _from(address: str | None = None) -> list[tuple[str, str]]:
    return [("x-forwarded-for", address or f"198.51.100.{uuid.uuid4().int % 250 + 1}-{uuid.uuid4().hex[:8]}")]


def _answer(call: Callable[[], object]) -> Refusal | None:
    try:
        call()
    except grpc.RpcError as error:
        return refusal(error)
    return None


def _tally(answers: list[Refusal | None]) -> Counter[tuple[str, str]]:
    return Counter(("OK", "") if a is None else (a.code.name, a.reason) for a in answers)


def _flood_while_logging_in(
    system: Deployment, register: Callable[[], pb.RegisterRequest]
) -> tuple[list[Refusal | None], list[Refusal | None]]:
    """`FLOOD` threads calling Register (each from a new address) for `FLOOD_SECONDS`, and
    meanwhile `LOGINS` correct logins one after another: the answers of both."""
    _user, email = system.register()
    gateway = system.auth(as_="gateway")
    deadline = time.monotonic() + FLOOD_SECONDS
    start_line = threading.Barrier(FLOOD + 1)

    def flood(_: int) -> list[Refusal | None]:
        answers = []
        start_line.wait()
        while time.monotonic() < deadline:
            answers.append(_answer(lambda: gateway.Register(register(), metadata=_from(), timeout=30)))
        return answers

    with ThreadPoolExecutor(FLOOD) as pool:
        flooding = [pool.submit(flood, i) for i in range(FLOOD)]
        start_line.wait()
        time.sleep(0.2)  # the flood is under way
        right = pb.LoginRequest(email=email, password=PASSWORD)
        logins = [_answer(lambda: gateway.Login(right, metadata=_from(), timeout=10)) for _ in range(LOGINS)]
        flooded = [answer for f in flooding for answer in f.result()]
    return flooded, logins


def test_a_flood_of_register_with_a_taken_email_hashes_nothing_and_logins_go_on(system: Deployment) -> None:
    _victim, taken = system.register()
    flooded, logins = _flood_while_logging_in(
        system, lambda: pb.RegisterRequest(email=taken, password=f"attacker-{uuid.uuid4().hex}")
    )
    # Each answer EMAIL_TAKEN: none waited for or took an argon2 slot (CREDENTIAL_CHECKS_BUSY).
    assert _tally(flooded) == {("ALREADY_EXISTS", "EMAIL_TAKEN"): len(flooded)}
    assert len(flooded) >= FLOOD
    assert _tally(logins) == {("OK", ""): LOGINS}


def test_a_flood_of_new_registrations_leaves_logins_their_argon2_slots(system: Deployment) -> None:
    """Many addresses (past any per-address limit) registering new accounts: hashes hold at
    most one of the two slots, so each login still finds one for its verification."""
    flooded, logins = _flood_while_logging_in(
        system,
        lambda: pb.RegisterRequest(email=f"flood-{uuid.uuid4().hex}@example.com", password=PASSWORD),
    )
    tally = _tally(flooded)
    assert set(tally) <= {("OK", ""), ("RESOURCE_EXHAUSTED", "CREDENTIAL_CHECKS_BUSY")}, tally
    assert tally[("OK", "")] >= 1 and tally[("RESOURCE_EXHAUSTED", "CREDENTIAL_CHECKS_BUSY")] >= 1, tally
    assert _tally(logins) == {("OK", ""): LOGINS}


def _identities_like(system: Deployment, pattern: str) -> int:
    engine = create_engine(system.settings("auth").db.url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM identity WHERE email LIKE :p"), {"p": pattern}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_an_address_registers_at_most_the_limit_and_nothing_more_is_created(system: Deployment) -> None:
    gateway = system.auth(as_="gateway")
    address = _from()
    batch = uuid.uuid4().hex[:8]

    def register() -> Refusal | None:
        request = pb.RegisterRequest(
            email=f"limit-{batch}-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD
        )
        return _answer(lambda: gateway.Register(request, metadata=address, timeout=30))

    start_line = threading.Barrier(3 * LIMIT)

    def at_once(_: int) -> Refusal | None:
        start_line.wait()
        return register()

    with ThreadPoolExecutor(3 * LIMIT) as pool:
        burst = list(pool.map(at_once, range(3 * LIMIT)))
    tally = _tally(burst)
    assert set(tally) <= {
        ("OK", ""),
        ("RESOURCE_EXHAUSTED", "REGISTRATION_THROTTLED"),
        ("RESOURCE_EXHAUSTED", "CREDENTIAL_CHECKS_BUSY"),  # not counted: the caller may retry
    }, tally
    assert 1 <= tally[("OK", "")] <= LIMIT, tally
    created = tally[("OK", "")]
    for _ in range(4 * LIMIT):  # the rest of the allowance, one at a time
        answer = register()
        if answer is None:
            created += 1
        elif answer.reason == "CREDENTIAL_CHECKS_BUSY":
            time.sleep(answer.retry_after or 1.0)
        else:
            break
    assert created == LIMIT
    assert answer is not None and answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, answer
    assert answer.reason == "REGISTRATION_THROTTLED", answer
    assert answer.retry_after is not None and WINDOW - 30 <= answer.retry_after <= WINDOW, answer
    assert _identities_like(system, f"limit-{batch}-%") == LIMIT
    # Another address is not held back.
    other = pb.RegisterRequest(email=f"other-{uuid.uuid4().hex[:8]}@example.com", password=PASSWORD)
    assert gateway.Register(other, metadata=_from(), timeout=30).user


def test_taken_emails_count_against_the_address_too(system: Deployment) -> None:
    """Register says whether an email is taken, so probing for accounts is limited as well."""
    _user, taken = system.register()
    gateway = system.auth(as_="gateway")
    address = _from()
    request = pb.RegisterRequest(email=taken, password=PASSWORD)
    answers = [
        _answer(lambda: gateway.Register(request, metadata=address, timeout=10)) for _ in range(LIMIT + 2)
    ]
    assert [a.reason for a in answers if a is not None] == ["EMAIL_TAKEN"] * LIMIT + [
        "REGISTRATION_THROTTLED"
    ] * 2
