"""The payments use cases (`Payments`): payments for orders (accounts are `accounts`'),
built on `records` (what is stored), `ledger` (how money moves) and `idempotency`.

Invariants: a ledger transaction's legs share a currency and sum to zero; entries are only
inserted. A ledger hold never exceeds `available = balance - held`, taken with the account
locked. With an outside provider (`provider`), it holds and moves the money, each change asked
of it outside the transaction (`outside`), and the ledger records what it did. One payment per
order; refunds never exceed what was captured. States: PENDING (at the provider) ->
AUTHORIZED | FAILED; AUTHORIZED -> CAPTURED | VOIDED; CAPTURED -> PARTIALLY_REFUNDED ->
REFUNDED; a sale (authorize with `capture`) is CAPTURED or FAILED at once in the ledger.
Saga compensation (OrderCancelled): void a hold, refund the rest of a capture.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from services.kit import paging
from services.kit.domain_errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.kit.money import Money, money_problems
from services.kit.text import visible_text_problem
from services.payments.idempotency import IN_FLIGHT, Request, fingerprint, key_problems, recall, remember
from services.payments.ledger import LedgerProvider
from services.payments.outside import CANCEL, OutsideSteps
from services.payments.provider_events import apply_event
from services.payments.providers import EventRefused, PaymentProvider, ProviderUnavailable, keys
from services.payments.records import (
    AUTHORIZED,
    CAPTURED,
    FAILED,
    PARTIALLY_REFUNDED,
    PAYMENT_FIELDS,
    PENDING,
    REFUNDED,
    VOIDED,
    Account,
    Payment,
    PaymentEvent,
    PaymentPage,
    Repository,
    Viewer,
    list_query,
)
from services.payments.rules import (
    ACCOUNT_NOT_FOUND,
    OwnerCheck,
    Transactions,
    refuse,
    visible,
    wrong_currency,
)

__all__ = ["ORDER_CANCELLED", "PAYMENT_METHOD_REQUIRED", "Payments"]

_TAKEN = (CAPTURED, PARTIALLY_REFUNDED, REFUNDED)
"""States in which the held amount was captured."""

ORDER_CANCELLED = "ORDER_CANCELLED"
"""Why an order cancelled before its payment was asked for has a FAILED payment."""
PAYMENT_METHOD_REQUIRED = "PAYMENT_METHOD_REQUIRED"
"""Why an authorization at an outside provider is declined for an account without a method."""
_MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class _Ask:
    """An authorization asked for: `account_id` empty picks the owner's in the currency."""

    order: str
    owner: str
    account_id: str
    amount: Money
    capture: bool = False
    """A sale: the amount taken in the same call."""


@dataclass
class Payments:
    transactions: Transactions
    provider: PaymentProvider | None = None
    """The outside provider new payments are held by; None: the ledger holds them."""
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    ledger: LedgerProvider = field(default_factory=LedgerProvider)
    """Moves the money of payments held in the ledger, inside the use case's transaction."""
    outside: OutsideSteps | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.provider is not None:
            self.outside = OutsideSteps(self.transactions, self.provider, self.clock)

    def _outside_for(self, payment: Payment) -> OutsideSteps:
        """The steps of a payment held by an outside provider: the configured one."""
        if self.outside is None or self.outside.provider.name != payment.provider:
            raise FailedPrecondition(
                "PAYMENT_PROVIDER_NOT_CONFIGURED",
                "payments/{payment} is held by {provider}, which this service is not configured for",
                payment=payment.id,
                provider=payment.provider,
            )
        return self.outside

    def receive_event(self, provider: str, headers: Mapping[str, str], body: bytes) -> None:
        """ReceiveProviderEvent: a webhook event from `provider`, applied once if its signature
        checks out. Nothing in an unverified body is read, logged or stored."""
        if self.outside is None or self.outside.provider.name != provider:
            raise NotFound(
                "PROVIDER_NOT_CONFIGURED",
                "this deployment takes no events from {provider}",
                provider=provider[:40],
            )
        try:
            event = self.outside.provider.verify_event(headers, body)
        except EventRefused as refused:
            raise Unauthenticated(
                "PROVIDER_EVENT_UNVERIFIED",
                "the event's signature is missing, wrong or too old",
                provider=provider,
            ) from refused
        except ProviderUnavailable as error:  # its verification service: the sender retries
            raise Unavailable(
                "PAYMENT_PROVIDER_UNAVAILABLE",
                "{provider} could not verify the event; send it again",
                retry_after_seconds=5.0,
                provider=provider,
            ) from error
        apply_event(self.transactions, self.outside.record, event)

    # -- payments -----------------------------------------------------------------------

    def payment(self, payment_id: str, check_owner: OwnerCheck) -> Payment:
        with self.transactions() as repo:
            found = repo.payment(payment_id)
        check_owner(found.owner if found else "", f"payments/{payment_id}")
        if found is None:
            raise NotFound("PAYMENT_NOT_FOUND", "payments/{payment} does not exist", payment=payment_id)
        return found

    def list_payments(
        self, viewer: Viewer, *, size: int, token: str, filter_text: str, order_by: str
    ) -> PaymentPage:
        limit = paging.page_size(size)
        orderings = ["create_time", "update_time"]
        query = visible(list_query(filter_text, order_by, PAYMENT_FIELDS, orderings), viewer)
        request = [filter_text, order_by]
        after = paging.decode_token(token, request)
        with self.transactions() as repo:
            found = repo.list_payments(query, after, limit + 1)

        def position(last: Payment) -> list[str]:
            key = last.update_time if query.ordering.field == "update_time" else last.create_time
            return [key.isoformat(), last.id]

        return PaymentPage(*paging.split_page(found, limit, position, request))

    def authorize(
        self,
        caller: str,
        request_id: str,
        *,
        order: str,
        owner: str,
        account_id: str,
        amount: Money,
        capture: bool = False,
    ) -> Payment:
        """AuthorizePayment: a decline is a FAILED payment, not an error; a second
        authorization of the order (another request_id) is ALREADY_EXISTS. With `capture` (a
        sale) the amount is taken too: in the ledger, in the same transaction; at an outside
        provider, asked right after its hold (a capture without an answer leaves it
        AUTHORIZED, taken by a repeat of the call or by CapturePayment)."""
        problems = key_problems(request_id)
        refuse(
            problems + money_problems("amount", amount.currency, amount.amount, positive=True), "authorize"
        )
        ask = _Ask(order, owner, account_id, amount, capture)
        # A sale is another request than a hold of the same order: its own fingerprint.
        verb = "sale" if capture else "authorize"
        request = Request(caller, request_id, fingerprint(verb, order, owner, account_id, amount))
        with self.transactions() as repo:
            payment = self._authorize(repo, ask, request)
        if payment.state == PENDING:  # new, or left by an earlier attempt: ask the provider
            payment = self._outside_for(payment).authorization(payment)
        if capture and payment.state == AUTHORIZED and payment.provider and not payment.compensation:
            return self._sold_outside(payment)
        return payment

    def _sold_outside(self, payment: Payment) -> Payment:
        """The capture of a sale held by an outside provider; without an answer (or refused),
        the payment as authorized: asked again by the sale's repeat or CapturePayment."""
        try:
            return self._outside_for(payment).capture(payment, None)
        except (Unavailable, FailedPrecondition):
            return payment

    def _authorize(self, repo: Repository, ask: _Ask, request: Request) -> Payment:
        amount = ask.amount
        # Locked first: balances and replays are then read under the lock. Only the asker's own
        # account in the order's currency is locked; any other is an account not found.
        locked = repo.lock_customer_account(ask.owner, amount.currency, ask.account_id)
        account = repo.account(locked) if locked else None
        replayed = recall(repo, request)
        if replayed is not None:
            return self._payment(repo, replayed)
        if account is None:
            return self._decline(repo, ask, "", ACCOUNT_NOT_FOUND, request)
        if self.provider is not None:
            # Recorded before the provider is asked (`outside`): no event until it answers.
            if not account.payment_method:
                return self._decline(repo, ask, account.id, PAYMENT_METHOD_REQUIRED, request)
            asked = replace(
                self._new_payment(ask, account.id, PENDING, ""),
                provider=self.provider.name,
                charged_method=account.payment_method,
                charged_customer=account.provider_customer,
            )
            return self._add(repo, asked, None, request)
        return self._in_ledger(repo, ask, account, request)

    def _in_ledger(self, repo: Repository, ask: _Ask, account: Account, request: Request) -> Payment:
        """Held by the ledger (for a sale, taken too), in the caller's transaction."""
        amount = ask.amount
        decline = self.ledger.authorize(repo, account, amount)
        if decline:
            return self._decline(repo, ask, account.id, decline, request)
        if ask.capture:  # held and taken in this one transaction: CAPTURED from the start
            sold = replace(self._new_payment(ask, account.id, CAPTURED, ""), captured=amount.amount)
            event = PaymentEvent(CAPTURED, sold, sold.amount)
            return self._add(repo, sold, event, request, money=self.ledger.capture)
        held = self._new_payment(ask, account.id, AUTHORIZED, "")
        return self._add(repo, held, PaymentEvent(AUTHORIZED, held, held.amount), request)

    def _decline(
        self, repo: Repository, ask: _Ask, account_id: str, reason: str, request: Request
    ) -> Payment:
        failed = self._new_payment(ask, account_id, FAILED, reason)
        return self._add(repo, failed, PaymentEvent(FAILED, failed, failed.amount, reason), request)

    def _new_payment(self, ask: _Ask, account_id: str, state: str, reason: str) -> Payment:
        now = self.clock()
        currency, amount = ask.amount.currency, ask.amount.amount
        return Payment(
            str(uuid.uuid4()), ask.order, account_id, ask.owner, currency, amount, state, reason, now, now
        )

    def _add(
        self,
        repo: Repository,
        payment: Payment,
        event: PaymentEvent | None,
        request: Request,
        *,
        money: Callable[[Repository, Payment, dt.datetime], None] | None = None,
    ) -> Payment:
        """Records `payment` as the order's one payment, and then moves its `money`."""
        if not repo.add_payment(payment):
            # The order has its payment already: a repeat of this call (a racing twin that
            # committed first) gets it, and so does any authorization of an order cancelled
            # before it (`cancel_order`); anything else is a second authorization.
            replayed = recall(repo, request)
            existing = repo.payment_for_order(payment.order)
            assert existing is not None
            if (existing.state, existing.failure_reason) == (FAILED, ORDER_CANCELLED):
                return self._cancelled_first(repo, existing, payment, request, replayed)
            if replayed != existing.id:
                # The payment's state and reason go with it: a caller that lost the first
                # answer (orders, after an upgrade) learns whether funds are held.
                raise AlreadyExists(
                    "ORDER_ALREADY_AUTHORIZED",
                    "{order} already has payments/{payment}",
                    order=payment.order,
                    payment=existing.id,
                    state=existing.state,
                    failure_reason=existing.failure_reason,
                )
            return existing
        if money is not None:
            money(repo, payment, payment.update_time)
        if event is not None:
            repo.publish(event)
        remember(repo, request, payment.id, self.clock())
        return payment

    def _cancelled_first(
        self,
        repo: Repository,
        cancelled: Payment,
        asked: Payment,
        request: Request,
        replayed: str | None,
    ) -> Payment:
        """An authorization of an order cancelled before it: the cancelled order's FAILED
        payment, if the authorization is for that order as it was (same owner and total)."""
        same = (cancelled.owner, cancelled.currency, cancelled.amount) == (
            asked.owner,
            asked.currency,
            asked.amount,
        )
        if not same:
            raise FailedPrecondition(
                ORDER_CANCELLED,
                "{order} was cancelled for another owner or total; nothing is authorized",
                order=asked.order,
            )
        if replayed is None:
            remember(repo, request, cancelled.id, self.clock())  # a reused request_id is then told
        return cancelled

    @staticmethod
    def _payment(repo: Repository, payment_id: str) -> Payment:
        found = repo.payment(payment_id)
        if found is None:
            raise NotFound("PAYMENT_NOT_FOUND", "payments/{payment} does not exist", payment=payment_id)
        return found

    def _locked(self, repo: Repository, payment_id: str) -> Payment:
        """The payment, read once its account is locked (every change locks it)."""
        repo.lock_account_of(payment_id)
        return self._payment(repo, payment_id)

    def capture(self, caller: str, request_id: str, payment_id: str) -> Payment:
        """AUTHORIZED -> CAPTURED; a payment already captured is returned unchanged."""
        refuse(key_problems(request_id), "capture")
        request = Request(caller, request_id, fingerprint("capture", payment_id))
        with self.transactions() as repo:
            payment = self._locked(repo, payment_id)
            if recall(repo, request) is not None:
                return payment
            outside = payment.state == AUTHORIZED and payment.provider
            if not outside:
                if payment.state == AUTHORIZED:
                    self._move(repo, payment, CAPTURED, self.ledger.capture)
                    payment = self._payment(repo, payment_id)
                    repo.publish(PaymentEvent(CAPTURED, payment, payment.amount))
                elif payment.state not in _TAKEN:
                    raise _not_in_state(payment, "PAYMENT_NOT_CAPTURABLE", "captured")
                remember(repo, request, payment_id, self.clock())
                return payment  # as read under the lock, or after the capture
        return self._outside_for(payment).capture(payment, request)

    def void(self, caller: str, request_id: str, payment_id: str) -> Payment:
        """AUTHORIZED -> VOIDED; a VOIDED payment is returned unchanged."""
        refuse(key_problems(request_id), "void")
        request = Request(caller, request_id, fingerprint("void", payment_id))
        with self.transactions() as repo:
            payment = self._locked(repo, payment_id)
            if recall(repo, request) is not None:
                return payment
            if not (payment.state == AUTHORIZED and payment.provider):
                if payment.state == AUTHORIZED:
                    self._void(repo, payment)
                elif payment.state != VOIDED:
                    raise _not_in_state(payment, "PAYMENT_NOT_VOIDABLE", "voided")
                remember(repo, request, payment_id, self.clock())
                return self._payment(repo, payment_id)
        return self._outside_for(payment).void(payment, request)

    def refund(
        self, caller: str, request_id: str, payment_id: str, amount: Money | None, reason: str
    ) -> Payment:
        """Returns `amount` (absent: the rest) of the captured money, never more."""
        problems = key_problems(request_id)
        if amount is not None:
            problems += money_problems("amount", amount.currency, amount.amount, positive=True)
        reason_problem = visible_text_problem(reason, max_length=_MAX_REASON)
        if reason_problem:
            problems.append(FieldViolation("reason", reason_problem))
        refuse(problems, "refund")
        request = Request(caller, request_id, fingerprint("refund", payment_id, amount, reason))
        with self.transactions() as repo:
            payment = self._locked(repo, payment_id)
            replayed = recall(repo, request)
            if replayed is not None and not replayed.startswith(IN_FLIGHT):
                return payment
            if replayed is not None:  # asked of the provider before, its answer not recorded
                value = int(replayed.removeprefix(IN_FLIGHT))
            else:
                value = _refundable(payment, amount)
                if not payment.provider:
                    self._refund(repo, payment, value, reason)
                    remember(repo, request, payment_id, self.clock())
                    return self._payment(repo, payment_id)
                # Stored before the provider is asked: a retry after a lost answer (which the
                # provider's event may have recorded meanwhile) asks again, the same.
                remember(repo, request, f"{IN_FLIGHT}{value}", self.clock())
        key = keys.request(caller, request_id)
        return self._outside_for(payment).refund(payment, value, reason, key, request)

    def cancel_order(
        self, order: str, reason: str, *, owner: str = "", total: Money | None = None
    ) -> Payment | None:
        """Saga compensation on OrderCancelled: void a hold, refund what was captured.

        An order cancelled before its payment was asked for (orders' AuthorizePayment for it
        is still to come, or in flight) gets a FAILED payment of its `total` with reason
        ORDER_CANCELLED, which takes the order's one payment, so an authorization arriving
        later finds it and holds nothing. Without a `total` (an
        event from before it carried one) nothing is recorded."""
        if total is not None and money_problems("total", total.currency, total.amount, positive=True):
            total = None  # no payment could have it: recorded as an event without one
        with self.transactions() as repo:
            found = repo.payment_for_order(order)
            if found is None and total is not None:
                cancelled = self._new_payment(_Ask(order, owner, "", total), "", FAILED, ORDER_CANCELLED)
                if repo.add_payment(cancelled):
                    return cancelled
                found = repo.payment_for_order(order)  # an authorization committed just before
            if found is None:
                return None
            payment = self._locked(repo, found.id)
            if payment.provider and payment.state in (PENDING, AUTHORIZED, *_TAKEN[:2]):
                # Asked of the provider by the worker, outside this (the consumer's) transaction.
                repo.set_compensation(payment.id, CANCEL, reason)
                return self._payment(repo, payment.id)
            if payment.state == AUTHORIZED:
                self._void(repo, payment)
            elif payment.state in (CAPTURED, PARTIALLY_REFUNDED):
                self._refund(repo, payment, payment.captured - payment.refunded, reason)
            return self._payment(repo, payment.id)

    def _move(
        self,
        repo: Repository,
        payment: Payment,
        after: str,
        money: Callable[[Repository, Payment, dt.datetime], None],
    ) -> None:
        now = self.clock()
        if not repo.set_state(payment, after, now):
            raise Aborted(
                "PAYMENT_CHANGED", "payments/{payment} changed meanwhile; retry", payment=payment.id
            )
        money(repo, payment, now)

    def _void(self, repo: Repository, payment: Payment) -> None:
        self._move(repo, payment, VOIDED, self.ledger.void)
        repo.publish(PaymentEvent(VOIDED, replace(payment, state=VOIDED), payment.amount))

    def _refund(self, repo: Repository, payment: Payment, amount: int, reason: str) -> None:
        after = REFUNDED if payment.refunded + amount == payment.captured else PARTIALLY_REFUNDED
        self._move(repo, payment, after, lambda r, p, now: self.ledger.refund(r, p, amount, now))
        repo.publish(PaymentEvent(REFUNDED, self._payment(repo, payment.id), amount, reason))


def _refundable(payment: Payment, amount: Money | None) -> int:
    """What a refund of `amount` (None: the rest) of `payment` returns, if it may."""
    if payment.state not in (CAPTURED, PARTIALLY_REFUNDED):
        raise _not_in_state(payment, "PAYMENT_NOT_REFUNDABLE", "refunded")
    if amount is not None and amount.currency != payment.currency:
        raise wrong_currency(payment.currency)
    rest = payment.captured - payment.refunded
    value = rest if amount is None else amount.amount
    if value > rest:
        raise FailedPrecondition(
            "REFUND_EXCEEDS_CAPTURED",
            "at most {rest} minor units of payments/{payment} can still be refunded",
            rest=rest,
            payment=payment.id,
        )
    return value


def _not_in_state(payment: Payment, reason: str, verb: str) -> FailedPrecondition:
    return FailedPrecondition(
        reason,
        "payments/{payment} is {state} and cannot be {verb}",
        payment=payment.id,
        state=payment.state,
        verb=verb,
    )
