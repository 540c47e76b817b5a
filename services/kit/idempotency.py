"""Request ids (AIP-155): one design for every service.

A client names a request with a ``request_id`` (a UUID). The first call with it stores,
next to its effect and in the same transaction, the request's scope (the caller), the
id, a fingerprint of the request's fields and what it produced. A repeat with the same
fields gets what the first produced, however often it comes; a repeat with other fields
is FAILED_PRECONDITION ``REQUEST_ID_REUSED`` and changes nothing. Where the pair is stored
is the service's: a table of request ids (orders, payments) or the created resource's own
row (a webhook).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

from services.kit.domain_errors import FailedPrecondition, FieldViolation

__all__ = ["Request", "canonical", "fingerprint", "key_problems", "replay"]


@dataclass(frozen=True, slots=True)
class Request:
    """One caller's request id and the fingerprint of the fields it came with."""

    scope: str
    """Whose id it is (a caller's name): two callers' ids never meet."""
    key: str
    fingerprint: str


def fingerprint(*fields: object) -> str:
    """A digest of a request's fields, each as its text, in order."""
    return hashlib.sha256(json.dumps([str(field) for field in fields]).encode()).hexdigest()


def canonical(request_id: str) -> str:
    """The form a request id is stored and looked up in: a UUID is valid in either case, and
    either case names the same request (else a retry in the other case would act twice)."""
    return request_id.lower()


def key_problems(
    request_id: str, *, required: bool = False, versions: tuple[int, ...] = (4,)
) -> list[FieldViolation]:
    """What is wrong with a ``request_id``: it must be a UUID of one of `versions` in its
    canonical form (either case; UUID5 lets a service derive a stable id from a name and retry
    with it after a restart). Empty is fine unless `required`."""
    if not request_id and not required:
        return []
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version not in versions or str(parsed) != canonical(request_id):
        return [FieldViolation("request_id", "must be a UUID4, e.g. 0b9b7c0e-3f1a-4c2e-8a5d-1e2f3a4b5c6d")]
    return []


def replay(first_fingerprint: str, request: Request, **metadata: str) -> None:
    """Check a repeat of `request` against the fingerprint its id was first stored with: the
    same is a replay (the caller answers with what the first call produced); another is
    REQUEST_ID_REUSED, whose details carry the id and `metadata` (what the id made)."""
    if first_fingerprint != request.fingerprint:
        raise FailedPrecondition(
            "REQUEST_ID_REUSED",
            "request_id {request_id} was already used with other fields",
            request_id=request.key,
            **metadata,
        )
