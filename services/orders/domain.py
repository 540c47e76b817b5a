"""Rules of orders: placing one (idempotently), its state machine, its side of the payment saga.

Invariants: an order has 1..100 lines in one currency; line totals and the order total are
computed here, never taken from the client. (owner, request_id) names at most one order.
Every change is a conditional write on `version` (optimistic concurrency; the etag derives
from it), so of two racing changes exactly one wins and publishes its event.
States (`TRANSITIONS`): PENDING -> AWAITING_PAYMENT -> PAID -> FULFILLED; PENDING -> PAID;
PENDING -> PAYMENT_FAILED; PENDING | AWAITING_PAYMENT | PAID -> CANCELLED. An RPC asking for
any other move is FAILED_PRECONDITION. The payment step (the payment worker, `payment.py`,
calling payments) moves a PENDING order on by payments' answers: taken in one call (a sale)
-> PAID, held with the capture still to come -> AWAITING_PAYMENT and captured later -> PAID,
or declined -> PAYMENT_FAILED; an answer finding the order elsewhere (it was cancelled
meanwhile) is a no-op. Compensation: cancelling emits OrderCancelled with the total and the
payment, which payments voids (held) or refunds (captured).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol

from services.kit import etags, filters, idempotency, paging
from services.kit.backoff import backoff_seconds
from services.kit.domain_errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.kit.money import MAX_AMOUNT_MINOR, Money, money_problems
from services.kit.names import chosen_id_problems
from services.kit.text import visible_text_problem

__all__ = [
    "AWAITING_PAYMENT",
    "CANCELLED",
    "FILTER_FIELDS",
    "FULFILLED",
    "PAID",
    "PAYMENT_FAILED",
    "PENDING",
    "SKU_RULE",
    "STATES",
    "TERMINAL",
    "TRANSITIONS",
    "Authorization",
    "CaptureOutcome",
    "Event",
    "HandOver",
    "Line",
    "NewLine",
    "Order",
    "OrderPage",
    "OrderQuery",
    "Orders",
    "OwnerCheck",
    "Repository",
    "RequestKey",
    "StepOutcome",
    "capture_request_id",
    "not_found",
    "sale_request_id",
    "watch_until",
]

_log = logging.getLogger("poly.orders")

PENDING = "PENDING"
AWAITING_PAYMENT = "AWAITING_PAYMENT"
PAID = "PAID"
FULFILLED = "FULFILLED"
CANCELLED = "CANCELLED"
PAYMENT_FAILED = "PAYMENT_FAILED"
STATES = (PENDING, AWAITING_PAYMENT, PAID, FULFILLED, CANCELLED, PAYMENT_FAILED)

TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({AWAITING_PAYMENT, PAID, PAYMENT_FAILED, CANCELLED}),
    AWAITING_PAYMENT: frozenset({PAID, CANCELLED}),
    PAID: frozenset({FULFILLED, CANCELLED}),
    FULFILLED: frozenset(),
    CANCELLED: frozenset(),
    PAYMENT_FAILED: frozenset(),
}
"""The legal moves of the state machine: nothing else ever changes `state`."""
TERMINAL = frozenset(state for state, moves in TRANSITIONS.items() if not moves)

MAX_LINES = 100
MAX_QUANTITY = 10_000
MAX_SKU = 64
_SKU = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_SKU - 1}}}", re.ASCII)
SKU_RULE = f"must be 1 to {MAX_SKU} characters of [A-Za-z0-9._-], starting with a letter or digit"
"""What a SKU must look like (ASCII only, applied with fullmatch), as its field violation says."""
MAX_CANCEL_REASON = 500
MAX_UNTIL_STATES = len(STATES)
_WRITE_ATTEMPTS = 5
PAYMENT_BACKOFF_BASE = dt.timedelta(seconds=0.5)
PAYMENT_BACKOFF_MAX = dt.timedelta(seconds=60)
PAYMENT_LEASE = dt.timedelta(seconds=30)
"""An order whose payment step a worker holds is due again after this unless its outcome is
recorded first (a replica that died mid-call or before recording the answer: the call is
made again with the same idempotency key, and payments answers as the first time)."""

FILTER_FIELDS: filters.Fields = {
    "state": filters.FieldSpec(filters.enum_value(*STATES)),
    "owner": filters.FieldSpec(filters.text_value),
    "create_time": filters.FieldSpec(filters.timestamp_value, filters.ORDERED),
    "update_time": filters.FieldSpec(filters.timestamp_value, filters.ORDERED),
}
_ORDER_BY = ("create_time", "update_time")
_DEFAULT_ORDER = filters.Ordering("create_time", descending=True)

Event = Literal["created", "cancelled", "paid", "payment_failed", "fulfilled"]

OwnerCheck = Callable[[str, str], None]
"""``check(owner, resource)`` (`authz.require_owner`): admits the current caller for a
resource owned by `owner` ("" when none exists: only callers who may see every order pass),
or refuses with PERMISSION_DENIED naming only `resource`, the same answer GetOrder gives."""


@dataclass(frozen=True, slots=True)
class NewLine:
    """A line as the client sent it."""

    sku: str
    quantity: int
    unit_price: Money


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    unit_price: Money
    total: Money


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    owner: str
    lines: tuple[Line, ...]
    total: Money
    state: str
    create_time: dt.datetime
    update_time: dt.datetime
    version: int = 1
    payment: str = ""
    failure_reason: str = ""
    cancel_reason: str = ""
    next_payment_at: dt.datetime | None = None
    """When a payment worker next asks payments for this order (to take a PENDING one's
    total, to capture an AWAITING_PAYMENT one); None when nothing is to be asked."""
    payment_attempts: int = 0
    """Tries of the current payment step that got no answer (the backoff grows with them)."""

    @property
    def name(self) -> str:
        return f"orders/{self.id}"

    @property
    def etag(self) -> str:
        return etags.etag(self.version)

    def moved(self, state: str, now: dt.datetime, **changes: object) -> Order:
        """This order in `state` (which must be a legal move), one version later."""
        if state not in TRANSITIONS[self.state]:
            raise ValueError(f"illegal transition {self.state} -> {state}")
        awaiting = state == AWAITING_PAYMENT
        fields: dict[str, object] = {
            "state": state,
            "version": self.version + 1,
            "update_time": max(now, self.update_time),
            "next_payment_at": now if awaiting else None,
            "payment_attempts": 0,
        }
        return dataclasses.replace(self, **{**fields, **changes})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RequestKey:
    """An idempotency key: the first order placed by `owner` with `request_id`."""

    owner: str
    request_id: str
    digest: str
    order_id: str


@dataclass(frozen=True, slots=True)
class OrderQuery:
    owner: str | None
    """Only this owner's orders (a plain user); None for every owner (admins, clients)."""
    terms: tuple[filters.Term, ...] = ()
    ordering: filters.Ordering = _DEFAULT_ORDER


@dataclass(frozen=True, slots=True)
class OrderPage:
    orders: list[Order]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Authorization:
    """Payments' answer to an authorization: the order's payment, taken, held or declined."""

    payment: str
    """`payments/{payment}`; may be empty for a decline."""
    decline_reason: str = ""
    """Why it was declined, UPPER_SNAKE (e.g. INSUFFICIENT_FUNDS); empty: the funds are held."""
    captured: bool = False
    """The funds were taken too (a sale): nothing is left to capture."""


class CaptureOutcome(Enum):
    CAPTURED = "captured"
    REFUSED = "refused"
    """The payment can no longer be captured (voided: the order was cancelled meanwhile)."""
    FAILED = "failed"
    """Payments could not answer; try again later."""


class StepOutcome(Enum):
    """How one try of an order's payment step ended, for `Orders.payments_attempted`."""

    DONE = "done"
    """Its outcome is recorded: PAID, PAYMENT_FAILED, or the order had moved on."""
    REFUSED = "refused"
    """The held payment can no longer be captured (voided: the order was cancelled
    meanwhile): nothing more is asked."""
    FAILED = "failed"
    """Payments could not answer; ask again after a backoff."""


class HandOver(Protocol):
    """A payment worker of this process, to which `Orders.create` hands each new order."""

    def accepting(self) -> bool:
        """Whether an order may be written taken by this worker (not once it stops)."""

    def due(self, order: Order) -> None:
        """`order` is committed and taken by this worker: ask for its payment now."""

    def cancelled(self, order: Order) -> None:
        """A caller here cancelled `order` (committed): a hold asked for it is not captured."""


class Repository(Protocol):
    """The orders database, inside one transaction."""

    def claim_request(self, key: RequestKey) -> RequestKey | None:
        """Record `key`; the key already recorded for (owner, request_id) if it is taken."""

    def add_order(self, order: Order) -> bool:
        """False when the order id is taken."""

    def order(self, order_id: str) -> Order | None: ...

    def versions(self, order_ids: Collection[str]) -> dict[str, int]:
        """The version of each of `order_ids` that exists."""

    def save(self, order: Order, seen_version: int) -> bool:
        """Write `order` if its row is still at `seen_version`; False if it moved on."""

    def publish(self, event: Event, order: Order) -> None: ...

    def list_orders(self, query: OrderQuery, after: Sequence[str] | None, limit: int) -> list[Order]: ...

    def claim_payments(self, now: dt.datetime, lease_until: dt.datetime, limit: int) -> list[Order]:
        """Up to `limit` PENDING or AWAITING_PAYMENT orders whose payment step is due, each
        now due only at `lease_until` (so no other replica claims it meanwhile)."""

    def schedule_payment(self, order_id: str, at: dt.datetime | None, attempts: int) -> None:
        """Set the next payment try of an order still PENDING or AWAITING_PAYMENT (None: no
        more)."""


Transactions = Callable[[], AbstractContextManager[Repository]]


def sale_request_id(order: Order) -> str:
    """The sale's idempotency key (AuthorizePayment with capture): the same for every try of
    one order, on every replica, so payments takes the order's total once however often it is
    asked. (Releases before sales held with the key of ``/authorize``: a sale of such an order
    gets ALREADY_EXISTS naming that payment, which the worker then captures.)"""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/sale"))


def capture_request_id(order: Order) -> str:
    """The capture's idempotency key: the same for every try of one order, on every replica."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/capture"))


def payment_backoff(attempts: int) -> dt.timedelta:
    """Delay before the next try after `attempts` failed ones: doubling, capped, jittered."""
    seconds = backoff_seconds(
        attempts + 1,
        base=PAYMENT_BACKOFF_BASE.total_seconds(),
        maximum=PAYMENT_BACKOFF_MAX.total_seconds(),
    )
    return dt.timedelta(seconds=seconds)


def _line_problems(index: int, line: NewLine) -> list[FieldViolation]:
    path = f"order.lines[{index}]"
    problems = []
    if not _SKU.fullmatch(line.sku):
        problems.append(FieldViolation(f"{path}.sku", SKU_RULE))
    if not 1 <= line.quantity <= MAX_QUANTITY:
        problems.append(FieldViolation(f"{path}.quantity", f"must be 1 to {MAX_QUANTITY}"))
    price = line.unit_price
    problems += money_problems(f"{path}.unit_price", price.currency, price.amount)
    return problems


def _reason_problem(reason: str) -> str | None:
    """Why a cancel reason (free text, spaces included: shown to the owner, sent on to
    payments) is refused: too long, or control, bidi or other invisible characters."""
    return visible_text_problem(reason, max_length=MAX_CANCEL_REASON)


def _order_problems(lines: Sequence[NewLine], order_id: str, request_id: str) -> list[FieldViolation]:
    problems: list[FieldViolation] = []
    if not 1 <= len(lines) <= MAX_LINES:
        problems.append(FieldViolation("order.lines", f"must have 1 to {MAX_LINES} lines"))
    else:
        currency = lines[0].unit_price.currency
        for index, line in enumerate(lines):
            problems += _line_problems(index, line)
            if line.unit_price.currency != currency:
                problems.append(
                    FieldViolation(
                        f"order.lines[{index}].unit_price.currency_code",
                        f"must be {currency}, the currency of order.lines[0]",
                    )
                )
        total = sum(line.unit_price.amount * line.quantity for line in lines)
        if not problems and total > MAX_AMOUNT_MINOR:
            problems.append(
                FieldViolation("order.lines", f"the order total must be at most {MAX_AMOUNT_MINOR}")
            )
        elif not problems and total == 0:  # nothing payments could hold: it would only fail
            problems.append(FieldViolation("order.lines", "the order total must be positive"))
    problems += chosen_id_problems(order_id, field="order_id")
    problems += idempotency.key_problems(request_id)
    return problems


def _digest(lines: Sequence[NewLine], order_id: str) -> str:
    # The fingerprint of a CreateOrder (kit.idempotency); computed as the stored ones were,
    # so a retry that spans an upgrade still replays.
    body = [order_id, [[x.sku, x.quantity, x.unit_price.currency, x.unit_price.amount] for x in lines]]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()


def watch_until(states: Sequence[str]) -> frozenset[str]:
    """The states that end a watch besides the terminal ones, as WatchOrder's `until_states`
    lists them; an entry that is no state ("" for STATE_UNSPECIFIED) is INVALID_ARGUMENT."""
    if len(states) > MAX_UNTIL_STATES:
        problems = [FieldViolation("until_states", f"must have at most {MAX_UNTIL_STATES} entries")]
    else:
        problems = [
            FieldViolation(f"until_states[{index}]", "must be an order state, not STATE_UNSPECIFIED")
            for index, state in enumerate(states)
            if state not in STATES
        ]
    if problems:
        raise InvalidArgument(
            "UNTIL_STATES_INVALID", "until_states must list order states", violations=problems
        )
    return frozenset(states)


def not_found(order_id: str) -> NotFound:
    """What the owner of ``orders/{order_id}`` (or an admin) learns when it does not exist."""
    return NotFound("ORDER_NOT_FOUND", "orders/{order} does not exist", order=order_id)


def _stale(order: Order, etag: str) -> Aborted:
    return Aborted(
        "ETAG_MISMATCH",
        "orders/{order} has changed (etag {current}, given {given}); read it again",
        order=order.id,
        current=order.etag,
        given=etag,
    )


@dataclass
class Orders:
    transactions: Transactions
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    hand_over: HandOver | None = None
    """The payment worker new orders are handed to once committed; None: a worker's claim
    finds them (at most its poll later)."""

    def create(
        self, owner: str, lines: Sequence[NewLine], order_id: str, request_id: str, check_owner: OwnerCheck
    ) -> Order:
        """Place an order for `owner`. A chosen `order_id` that is taken is ALREADY_EXISTS only
        for a caller `check_owner` admits for the existing order; anyone else gets the answer
        GetOrder gives them for it (AIP-133), so ids cannot be probed. A repeat of `request_id`
        by the same owner returns the first order.

        The new order's payment is due at once: written taken by `hand_over` (its lease, as
        a claim would set) and handed to it after the commit, or left for any worker's claim."""
        problems = _order_problems(lines, order_id, request_id)
        if problems:
            raise InvalidArgument("ORDER_INVALID", "the order is invalid", violations=problems)
        now = self.clock()
        priced = tuple(Line(x.sku, x.quantity, x.unit_price, x.unit_price.times(x.quantity)) for x in lines)
        total = Money(priced[0].total.currency, sum(line.total.amount for line in priced))
        hand_over = self.hand_over if self.hand_over is not None and self.hand_over.accepting() else None
        order = Order(
            order_id or f"o{uuid.uuid4().hex}",
            owner,
            priced,
            total,
            PENDING,
            now,
            now,
            next_payment_at=now if hand_over is None else now + PAYMENT_LEASE,
        )
        with self.transactions() as repo:
            if request_id:
                key = RequestKey(owner, idempotency.canonical(request_id), _digest(lines, order_id), order.id)
                first = repo.claim_request(key)
                if first is not None:
                    return self._replay(repo, first, key)
            if not repo.add_order(order):
                existing = repo.order(order.id)
                check_owner(existing.owner if existing else "", order.name)
                raise AlreadyExists("ORDER_EXISTS", "orders/{order} already exists", order=order.id)
            repo.publish("created", order)
        if hand_over is not None:
            hand_over.due(order)
        return order

    @staticmethod
    def _replay(repo: Repository, first: RequestKey, key: RequestKey) -> Order:
        idempotency.replay(first.digest, idempotency.Request(key.owner, key.request_id, key.digest))
        order = repo.order(first.order_id)
        if order is None:
            raise not_found(first.order_id)
        return order

    def find(self, order_id: str) -> Order | None:
        """The order, or None: for an owner check, which comes before existence."""
        with self.transactions() as repo:
            return repo.order(order_id)

    def versions(self, order_ids: Collection[str]) -> dict[str, int]:
        """The current version of each existing order of `order_ids` (watches' re-check)."""
        with self.transactions() as repo:
            return repo.versions(order_ids)

    def get(self, order_id: str) -> Order:
        order = self.find(order_id)
        if order is None:
            raise not_found(order_id)
        return order

    def list_orders(
        self, viewer: str, *, sees_all: bool, size: int, token: str, filter_text: str, order_by: str
    ) -> OrderPage:
        limit = paging.page_size(size)
        terms = tuple(filters.parse_filter(filter_text, FILTER_FIELDS))
        ordering = filters.parse_order_by(order_by, _ORDER_BY, default=_DEFAULT_ORDER)
        request_fields = [filter_text.strip(), ordering.field, ordering.descending]
        after = paging.decode_token(token, request_fields)
        query = OrderQuery(None if sees_all else viewer, terms, ordering)
        with self.transactions() as repo:
            found = repo.list_orders(query, after, limit + 1)

        def position(last: Order) -> list[str]:
            stamp = last.update_time if ordering.field == "update_time" else last.create_time
            return [stamp.isoformat(), last.id]

        orders, next_token = paging.split_page(found, limit, position, request_fields)
        return OrderPage(orders, next_token)

    def cancel(self, order_id: str, etag: str, reason: str) -> Order:
        problem = _reason_problem(reason)
        if problem:
            raise InvalidArgument(
                "CANCEL_REASON_INVALID",
                "reason must be at most {limit} characters of visible text",
                violations=[FieldViolation("reason", problem)],
                limit=MAX_CANCEL_REASON,
            )

        def cancelled(order: Order) -> Order:
            return order.moved(CANCELLED, self.clock(), cancel_reason=reason)

        order = self._change(
            order_id,
            etag,
            target=CANCELLED,
            refusal="ORDER_NOT_CANCELLABLE",
            change=cancelled,
            event="cancelled",
        )
        if self.hand_over is not None:
            self.hand_over.cancelled(order)
        return order

    def fulfill(self, order_id: str, etag: str) -> Order:
        def fulfilled(order: Order) -> Order:
            return order.moved(FULFILLED, self.clock())

        return self._change(
            order_id,
            etag,
            target=FULFILLED,
            refusal="ORDER_NOT_FULFILLABLE",
            change=fulfilled,
            event="fulfilled",
        )

    def _change(
        self,
        order_id: str,
        etag: str,
        *,
        target: str,
        refusal: str,
        change: Callable[[Order], Order],
        event: Event,
    ) -> Order:
        """Move an order to `target` for a caller: already there is a safe retry (unchanged,
        no etag check); a stale etag is ABORTED; an illegal move is FAILED_PRECONDITION.
        A lost race without an etag is retried from a fresh read."""
        for _ in range(_WRITE_ATTEMPTS):
            with self.transactions() as repo:
                order = repo.order(order_id)
                if order is None:
                    raise not_found(order_id)
                if order.state == target:
                    return order
                if not etags.matches(etag, order.version):
                    raise _stale(order, etag)
                if target not in TRANSITIONS[order.state]:
                    raise FailedPrecondition(
                        refusal,
                        "orders/{order} is {state}; it cannot become {target}",
                        order=order_id,
                        state=order.state,
                        target=target,
                    )
                changed = change(order)
                if repo.save(changed, order.version):
                    repo.publish(event, changed)
                    return changed
        raise Aborted("ORDER_CHANGED_CONCURRENTLY", "orders/{order} kept changing; retry", order=order_id)

    # -- the payment worker's side ------------------------------------------------------

    def claim_payments(self, limit: int) -> list[Order]:
        now = self.clock()
        with self.transactions() as repo:
            return repo.claim_payments(now, now + PAYMENT_LEASE, limit)

    def authorized(self, order: Order, payment: str) -> Order | None:
        """Payments holds `order`'s total as `payment`: PENDING -> AWAITING_PAYMENT, its
        capture still held by the worker that asked (its lease), which captures it next
        (None: the order had moved on, e.g. cancelled; payments voids the hold on its
        OrderCancelled)."""
        lease_until = self.clock() + PAYMENT_LEASE
        return self._answered(
            order, PENDING, AWAITING_PAYMENT, None, payment=payment, next_payment_at=lease_until
        )

    def declined(self, order: Order, answer: Authorization) -> Order | None:
        """Payments declined `order`'s authorization: PENDING -> PAYMENT_FAILED and
        OrderPaymentFailed, in one transaction (None: the order had moved on)."""
        reason = answer.decline_reason or "UNKNOWN"
        return self._answered(
            order, PENDING, PAYMENT_FAILED, "payment_failed", payment=answer.payment, failure_reason=reason
        )

    def captured(self, order: Order, payment: str = "") -> Order | None:
        """Payments answered that `order`'s payment is captured: AWAITING_PAYMENT -> PAID and
        OrderPaid, in one transaction (None: the order had moved on, e.g. cancelled). With
        `payment`: the PENDING order's payment, just taken by a sale (or held and captured at
        once), so PENDING -> PAID (no hold was recorded: nothing waited between)."""
        if payment:
            return self._answered(order, PENDING, PAID, "paid", payment=payment)
        return self._answered(order, AWAITING_PAYMENT, PAID, "paid", payment=order.payment)

    def _answered(
        self, order: Order, source: str, target: str, event: Event | None, **changes: object
    ) -> Order | None:
        """Payments' answer recorded: `order` from `source` to `target`, and `event` published
        with the change, in one transaction (None: the order had moved on)."""
        with self.transactions() as repo:
            changed = _saga_step(repo, order, source, target, self.clock(), **changes)
            if changed is not None and event is not None:
                repo.publish(event, changed)
            return changed

    def payments_attempted(self, outcomes: Sequence[tuple[Order, StepOutcome]]) -> list[dt.timedelta]:
        """Reschedule after a batch of tries that did not end their step, in one transaction: a
        failure backs off, a refusal stops (an outcome is recorded at once, by `authorized`,
        `declined` or `captured`). Each order is as the try last saw it. Returns how soon each
        retry it scheduled falls due, for the worker to claim it then."""
        if all(outcome is StepOutcome.DONE for _, outcome in outcomes):
            return []  # the usual pass: nothing to reschedule, no transaction
        now = self.clock()
        delays: list[dt.timedelta] = []
        with self.transactions() as repo:
            for order, outcome in outcomes:
                if outcome is StepOutcome.FAILED:
                    delays.append(payment_backoff(order.payment_attempts))
                    repo.schedule_payment(order.id, now + delays[-1], order.payment_attempts + 1)
                elif outcome is StepOutcome.REFUSED:
                    repo.schedule_payment(order.id, None, order.payment_attempts + 1)
        return delays


def _saga_step(
    repo: Repository, seen: Order, source: str, target: str, now: dt.datetime, **changes: object
) -> Order | None:
    """Move the order from `source` to `target` by payments' answer; None (a logged no-op)
    when the answer finds it elsewhere (cancelled meanwhile, or moved by another worker's
    try). Losing a race raises ABORTED: the worker leaves the order to its lease, and the
    next try sees the new state.

    First written from `seen` (the order as the worker last saw it) without reading it: the
    write is conditional on its version, and every field it writes either changes only with
    a new version or is set afresh by the move, so a write that matches is the one a read
    would have made. Only when it does not match is the order read."""
    if seen.state == source:
        moved = seen.moved(target, now, **changes)
        if repo.save(moved, seen.version):
            return moved
    order_id = seen.id
    order = repo.order(order_id)
    if order is None or order.state != source:
        _log.info(
            "payment answer ignored",
            extra={"order": order_id, "state": order.state if order else None, "target": target},
        )
        return None
    changed = order.moved(target, now, **changes)
    if not repo.save(changed, order.version):
        raise Aborted("ORDER_CHANGED_CONCURRENTLY", "orders/{order} changed; retry", order=order_id)
    return changed
