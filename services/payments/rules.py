"""What the payments use cases share: the shape of their storage and ownership checks, and
the refusals and list narrowing both `accounts` and `domain` apply."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

from services.kit.domain_errors import FieldViolation, InvalidArgument
from services.kit.filters import Term
from services.payments.records import Account, LedgerEntry, ListQuery, Repository, Viewer

__all__ = [
    "ACCOUNT_NOT_FOUND",
    "OwnerCheck",
    "Transactions",
    "position",
    "refuse",
    "visible",
    "wrong_currency",
]

ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"

Transactions = Callable[[], AbstractContextManager[Repository]]
OwnerCheck = Callable[[str, str], None]
"""``check(owner, resource)`` (`authz.require_owner`): refuses the call unless its caller may
act on resources of `owner` (``users/{id}``; "" when the resource does not exist, so only
callers who may see everything pass), with PERMISSION_DENIED naming only `resource`, the
name asked for. It runs before existence is checked, so another's resource and a missing
one answer alike (AIP-211)."""


def refuse(problems: list[FieldViolation], what: str) -> None:
    """INVALID_ARGUMENT `<WHAT>_INVALID` listing `problems`, if there are any."""
    if problems:
        raise InvalidArgument(
            f"{what.upper().replace(' ', '_')}_INVALID",
            "the {what} request is invalid",
            violations=problems,
            what=what,
        )


def wrong_currency(expected: str) -> InvalidArgument:
    return InvalidArgument(
        "CURRENCY_MISMATCH",
        "amount must be in {currency}",
        violations=[FieldViolation("amount.currency_code", f"must be {expected}")],
        currency=expected,
    )


def visible(query: ListQuery, viewer: Viewer) -> ListQuery:
    """A plain user's list is narrowed to their own resources, whatever the filter says."""
    if viewer.sees_all:
        return query
    return replace(query, terms=(*query.terms, Term("owner", "=", viewer.subject)))


def position(last: Account | LedgerEntry) -> list[str]:
    """The page-token position after `last` in creation order."""
    return [last.create_time.isoformat(), last.id]
