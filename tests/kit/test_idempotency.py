"""One request-id design (services/kit/idempotency.py); each service's replay through its API
is tested with the service (orders, payments, notifications)."""

from __future__ import annotations

import uuid

import pytest

from services.kit import idempotency
from services.kit.domain_errors import FailedPrecondition


def test_a_fingerprint_depends_on_every_field_and_its_order() -> None:
    first = idempotency.fingerprint("fund", "accounts/a", 100)
    assert first == idempotency.fingerprint("fund", "accounts/a", 100)
    assert first != idempotency.fingerprint("fund", "accounts/a", 101)
    assert first != idempotency.fingerprint("accounts/a", "fund", 100)
    assert first != idempotency.fingerprint("fund", "accounts/a", 100, "")


def test_a_repeat_with_the_same_fields_is_a_replay() -> None:
    request = idempotency.Request("users/u1", str(uuid.uuid4()), idempotency.fingerprint("x"))
    idempotency.replay(request.fingerprint, request)  # no error: answer with the first result


def test_a_repeat_with_other_fields_is_request_id_reused() -> None:
    request = idempotency.Request("users/u1", str(uuid.uuid4()), idempotency.fingerprint("x"))
    with pytest.raises(FailedPrecondition) as refused:
        idempotency.replay(idempotency.fingerprint("y"), request)
    assert refused.value.reason == "REQUEST_ID_REUSED"
    assert request.key in str(refused.value)


@pytest.mark.parametrize(
    ("request_id", "versions", "ok"),
    [
        ("", (4,), True),
        (str(uuid.uuid4()), (4,), True),
        (str(uuid.uuid4()).upper(), (4,), True),
        (str(uuid.uuid5(uuid.NAMESPACE_URL, "orders/o1")), (4,), False),
        (str(uuid.uuid5(uuid.NAMESPACE_URL, "orders/o1")), (4, 5), True),
        ("not-a-uuid", (4,), False),
        (str(uuid.uuid4()).replace("-", ""), (4,), False),
    ],
    ids=["empty", "uuid4", "upper-case", "uuid5-not-allowed", "uuid5-allowed", "junk", "no-hyphens"],
)
def test_request_ids_are_canonical_uuids_of_the_allowed_versions(
    request_id: str, versions: tuple[int, ...], ok: bool
) -> None:
    assert (idempotency.key_problems(request_id, versions=versions) == []) is ok


def test_a_required_request_id_must_be_given() -> None:
    assert [v.field for v in idempotency.key_problems("", required=True)] == ["request_id"]


@pytest.mark.parametrize(
    ("request_id", "required", "versions", "fine"),
    [
        ("", False, (4,), True),
        ("", True, (4,), False),
        ("0b9b7c0e-3f1a-4c2e-8a5d-1e2f3a4b5c6d", False, (4,), True),
        ("0B9B7C0E-3F1A-4C2E-8A5D-1E2F3A4B5C6D", False, (4,), True),
        ("0b9b7c0e3f1a4c2e8a5d1e2f3a4b5c6d", False, (4,), False),
        ("{0b9b7c0e-3f1a-4c2e-8a5d-1e2f3a4b5c6d}", False, (4,), False),
        ("74738ff5-5367-5958-9aee-98fffdcd1876", False, (4,), False),
        ("74738ff5-5367-5958-9aee-98fffdcd1876", False, (4, 5), True),
        ("not-a-uuid", True, (4, 5), False),
    ],
    ids=["empty", "empty-required", "v4", "upper-case", "no-dashes", "braces", "v5", "v5-allowed", "garbage"],
)
def test_request_ids_are_canonical_uuids_of_the_given_versions(
    request_id: str, required: bool, versions: tuple[int, ...], fine: bool
) -> None:
    problems = idempotency.key_problems(request_id, required=required, versions=versions)
    assert (problems == []) is fine
    assert all(p.field == "request_id" for p in problems)
