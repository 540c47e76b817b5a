"""Request-id idempotency (`services.payments.idempotency`): which keys are accepted, and how a
stored key replays its result or refuses other fields, over the real store."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from services.kit.domain_errors import Aborted, FailedPrecondition
from services.kit.money import Money
from services.payments.idempotency import Request, fingerprint, key_problems, recall, remember
from tests.payments.local import LocalPayments

NOW = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        (str(uuid.uuid4()), True),
        (str(uuid.uuid5(uuid.NAMESPACE_URL, "orders/1")), True),
        (str(uuid.uuid4()).upper(), True),
        (str(uuid.uuid1()), False),
        (uuid.uuid4().hex, False),
        ("", False),
    ],
    ids=["uuid4", "uuid5", "upper-case", "uuid1", "no-hyphens", "empty"],
)
def test_a_request_id_is_a_uuid4_or_a_uuid5(key: str, accepted: bool) -> None:
    problems = key_problems(key)
    assert (problems == []) is accepted
    assert all(p.field == "request_id" for p in problems)


def test_a_fingerprint_tells_calls_apart() -> None:
    assert fingerprint("fund", "a", Money("EUR", 1)) == fingerprint("fund", "a", Money("EUR", 1))
    assert fingerprint("fund", "a", Money("EUR", 1)) != fingerprint("fund", "a", Money("EUR", 2))
    assert fingerprint("fund", "a,b") != fingerprint("fund", "a", "b")


def test_a_stored_key_replays_its_result_and_refuses_other_fields(local: LocalPayments) -> None:
    key = str(uuid.uuid4())
    first = Request("users/admin", key, fingerprint("fund", "a"))
    with local.payments.transactions() as repo:
        assert recall(repo, first) is None
        remember(repo, first, "result-1", NOW)
    with local.payments.transactions() as repo:
        assert recall(repo, first) == "result-1"
        with pytest.raises(FailedPrecondition) as reused:
            recall(repo, Request("users/admin", key, fingerprint("fund", "b")))
    assert reused.value.reason == "REQUEST_ID_REUSED"
    with local.payments.transactions() as repo:
        assert recall(repo, Request("users/other", key, fingerprint("fund", "b"))) is None, (
            "keys are per caller"
        )


def test_a_key_stored_twice_is_in_flight(local: LocalPayments) -> None:
    request = Request("users/admin", str(uuid.uuid4()), fingerprint("void", "p"))
    with local.payments.transactions() as repo:
        remember(repo, request, "p", NOW)
    with pytest.raises(Aborted) as twice, local.payments.transactions() as repo:
        remember(repo, request, "p", NOW)
    assert twice.value.reason == "REQUEST_IN_FLIGHT"


def test_a_call_without_a_key_is_never_stored(local: LocalPayments) -> None:
    with local.payments.transactions() as repo:
        remember(repo, None, "p", NOW)
        assert recall(repo, None) is None
