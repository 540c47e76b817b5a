"""Where the payments service keeps its request ids: the kit's one design
(`services.kit.idempotency`: scope, fingerprint, result, REQUEST_ID_REUSED) over the
repository's table of request ids. A request id is required here, and may be a UUID5: a
service deriving its id from a name (orders' capture of an order) retries with the same id
even after a restart, without storing it first."""

from __future__ import annotations

import datetime as dt

from services.kit import idempotency
from services.kit.domain_errors import Aborted, FieldViolation
from services.kit.idempotency import Request, fingerprint
from services.payments.records import Repository

__all__ = ["IN_FLIGHT", "Request", "fingerprint", "key_problems", "recall", "remember", "settle"]

IN_FLIGHT = "in-flight:"
"""A stored result that starts with it: the call is still being asked of a provider
(`outside`); a retry asks again with what follows it."""


def key_problems(request_id: str) -> list[FieldViolation]:
    return idempotency.key_problems(request_id, required=True, versions=(4, 5))


def recall(repo: Repository, request: Request | None) -> str | None:
    """The result id of an earlier call with this id, or None for a new id (or no id)."""
    if request is None:
        return None
    key = idempotency.canonical(request.key)
    found = repo.recall(request.scope, key)
    if found is None and key != request.key:  # stored as given, before ids were canonical
        found = repo.recall(request.scope, request.key)
    if found is None:
        return None
    idempotency.replay(found[0], request)
    return found[1]


def remember(repo: Repository, request: Request | None, result: str, now: dt.datetime) -> None:
    """Store the id's result; an id stored meanwhile (by a racing twin) is ABORTED."""
    if request is not None and not repo.remember(
        request.scope, idempotency.canonical(request.key), request.fingerprint, result, now
    ):
        raise Aborted("REQUEST_IN_FLIGHT", "a call with this request_id is in flight; retry")


def settle(repo: Repository, request: Request | None, result: str) -> None:
    """Replace an in-flight result of the id with the final one."""
    if request is not None:
        repo.settle_request(request.scope, idempotency.canonical(request.key), result)
