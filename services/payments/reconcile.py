"""Reconciliation: the ledger's payments held by an outside provider, compared with the
provider's own records, for payments created in a time range (`reconcile`). It reads and
reports; it never changes either side: a difference is for a person to look into (a webhook
that never came, a refund made twice by hand, a hold nobody recorded).

The provider says what it has (`Findings`): each of our payments looked up by its reference,
and where it can list them, every authorization it made in the range, so holds the ledger
does not know of are found too (Stripe can; PayPal's APIs here cannot, which the report says).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PARTIALLY_REFUNDED,
    PENDING,
    REFUNDED,
    VOIDED,
    Payment,
)

__all__ = ["Difference", "Findings", "Held", "Lookup", "Report", "reconcile", "report_lines"]

_TAKEN = (CAPTURED, PARTIALLY_REFUNDED, REFUNDED)
_PENDING_FOR = dt.timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Held:
    """What the provider records of one authorization, in the ledger's words."""

    reference: str
    payment: str
    """Our payment's id, where the provider keeps it (its metadata); "" when it does not."""
    state: str
    """AUTHORIZED, CAPTURED, VOIDED, FAILED or PENDING (the provider has not decided)."""
    captured: int
    refunded: int | None
    """None when the provider's records here do not say (PayPal's capture gives no total)."""


class Findings(Protocol):
    """What a provider tells reconciliation (`PaymentProvider`s implement it)."""

    def look_up(self, payment: Payment) -> Held | None:
        """The provider's record of the payment's authorization; None: it has none."""

    def held_between(self, since: dt.datetime, until: dt.datetime) -> Iterable[Held] | None:
        """Every authorization made in the range; None when the provider cannot list them."""


@dataclass(frozen=True, slots=True)
class Difference:
    payment: str
    """``payments/{id}``, or the provider's reference when the ledger has no such payment."""
    kind: str
    """STATE, CAPTURED_AMOUNT, REFUNDED_AMOUNT, MISSING_AT_PROVIDER, UNKNOWN_TO_LEDGER or
    STILL_PENDING."""
    ours: str
    theirs: str


@dataclass(frozen=True, slots=True)
class Report:
    provider: str
    since: dt.datetime
    until: dt.datetime
    compared: int
    differences: list[Difference]
    listed: bool
    """Whether the provider listed its authorizations (so holds unknown to us were looked for)."""


Lookup = Callable[[str, dt.datetime, dt.datetime], Sequence[Payment]]
"""The ledger's payments of a provider created in a range (`records.Repository`'s)."""


def _expected(ours: str) -> tuple[str, ...]:
    """The provider states that agree with a payment's state in the ledger."""
    if ours in _TAKEN:
        return (CAPTURED,)
    if ours == FAILED:  # declined, or cancelled before it held anything: holds nothing there
        return (FAILED, VOIDED)
    return (ours,)


def _compare(payment: Payment, held: Held | None, now: dt.datetime) -> list[Difference]:
    name = payment.name
    if payment.state == PENDING:
        if now - payment.update_time > _PENDING_FOR:
            theirs = held.state if held else "nothing"
            return [Difference(name, "STILL_PENDING", PENDING, theirs)]
        return []
    if held is None:
        if payment.state == FAILED and not payment.provider_reference:
            return []  # declined before the provider made anything
        return [Difference(name, "MISSING_AT_PROVIDER", payment.state, "nothing")]
    found: list[Difference] = []
    if held.state not in _expected(payment.state):
        found.append(Difference(name, "STATE", payment.state, held.state))
    if payment.state in _TAKEN and held.captured != payment.captured:
        found.append(Difference(name, "CAPTURED_AMOUNT", str(payment.captured), str(held.captured)))
    if payment.state in _TAKEN and held.refunded is not None and held.refunded != payment.refunded:
        found.append(Difference(name, "REFUNDED_AMOUNT", str(payment.refunded), str(held.refunded)))
    return found


def reconcile(
    provider: str,
    findings: Findings,
    ledger: Lookup,
    since: dt.datetime,
    until: dt.datetime,
    *,
    now: dt.datetime | None = None,
) -> Report:
    """Compare the ledger's `provider` payments created in [`since`, `until`) with the
    provider's records of them; list the differences."""
    now = now or dt.datetime.now(dt.UTC)
    payments = ledger(provider, since, until)
    differences: list[Difference] = []
    for payment in payments:
        held = findings.look_up(payment) if payment.provider_reference else None
        differences += _compare(payment, held, now)
    listed = findings.held_between(since, until)
    if listed is not None:
        references = {p.provider_reference for p in payments if p.provider_reference}
        asked = {p.id for p in payments if p.state == PENDING and not p.provider_reference}
        for held in listed:
            if (
                held.reference in references
                or held.payment in asked
                or held.state not in (AUTHORIZED, CAPTURED)
            ):
                continue
            # Money held that no recorded payment accounts for: a hold nobody recorded, or a
            # second one for one of ours (asked again after the provider forgot the key).
            named = f"payments/{held.payment}" if held.payment else held.reference
            differences.append(
                Difference(named, "UNKNOWN_TO_LEDGER", "nothing", f"{held.state} {held.reference}")
            )
    return Report(provider, since, until, len(payments), differences, listed is not None)


def report_lines(report: Report, *, as_json: bool = False) -> Iterator[str]:
    """The report for a person (a summary, then one line per difference), or as one JSON object."""
    if as_json:
        yield json.dumps(
            {
                "provider": report.provider,
                "since": report.since.isoformat(),
                "until": report.until.isoformat(),
                "compared": report.compared,
                "listed": report.listed,
                "differences": [
                    {"payment": d.payment, "kind": d.kind, "ledger": d.ours, "provider": d.theirs}
                    for d in report.differences
                ],
            }
        )
        return
    span = f"{report.since:%Y-%m-%d %H:%M}Z to {report.until:%Y-%m-%d %H:%M}Z"
    found = len(report.differences)
    yield f"{report.provider}: {report.compared} payments created {span}, {found} differences"
    if not report.listed:
        yield f"  ({report.provider} cannot list its holds here: none unknown to the ledger is looked for)"
    for d in report.differences:
        yield f"  {d.kind:<20} {d.payment}  ledger: {d.ours}  {report.provider}: {d.theirs}"
