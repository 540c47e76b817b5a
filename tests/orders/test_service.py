"""The orders service as a process: create (idempotent), the state machine, etags, lists, security."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from poly.orders.v1 import orders_service_pb2 as pb
from poly.orders.v1 import resources_pb2
from services.kit.domain_errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tests.orders.conftest import Answer, System, create, line
from tests.support.status import refusal
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

State = resources_pb2.Order


def _refused(
    call: object, request: object, who: list[tuple[str, str]]
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as failed:
        call(request, metadata=who, timeout=10)  # type: ignore[operator]
    found = refusal(failed.value)
    return found.code, found.reason, found.violations


def _names(system: System, who: list[tuple[str, str]], **fields: object) -> list[str]:
    reply = system.stub().ListOrders(pb.ListOrdersRequest(page_size=1000, **fields), metadata=who, timeout=10)  # type: ignore[arg-type]
    return [order.name for order in reply.orders]


def test_create_computes_totals_and_publishes_order_created(system: System) -> None:
    user, who = system.user()
    order = create(system, who, line("A-1", 3, 250), line("B_2.x", 1, 1000), order_id="first-order")
    assert order.name == "orders/first-order" and order.owner == user
    assert order.state == State.STATE_PENDING and order.etag
    assert [(x.total.amount_minor, x.total.currency_code) for x in order.lines] == [
        (750, "EUR"),
        (1000, "EUR"),
    ]
    assert (order.total.amount_minor, order.total.currency_code) == (1750, "EUR")
    assert order.create_time == order.update_time
    assert system.published(order.name) == ["OrderCreated"]
    generated = create(system, who)
    assert generated.name.startswith("orders/o") and generated.name != order.name


def _answer(call: object, request: object, who: list[tuple[str, str]]) -> tuple[object, ...]:
    """The whole refusal: code, reason, message, metadata and violations."""
    with pytest.raises(grpc.RpcError) as failed:
        call(request, metadata=who, timeout=10)  # type: ignore[operator]
    found = refusal(failed.value)
    return found.code, found.reason, found.message, found.metadata, found.violations


def test_a_taken_order_id_is_already_exists_only_for_its_owner(system: System) -> None:
    # AIP-133: a caller who may not see the order learns what GetOrder tells them, not that
    # the id is taken; the owner and an admin learn ALREADY_EXISTS.
    _, who = system.user()
    _, other = system.user()
    order_id = f"taken-{uuid.uuid4().hex[:8]}"
    key = str(uuid.uuid4())
    first = create(system, who, order_id=order_id, request_id=key)
    stub = system.stub()
    get = pb.GetOrderRequest(name=first.name)
    again = pb.CreateOrderRequest(order=resources_pb2.Order(lines=[line()]), order_id=order_id)
    replayed = pb.CreateOrderRequest(order=again.order, order_id=order_id, request_id=key)
    expected = _answer(stub.GetOrder, get, other)
    assert expected[:2] == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER")
    assert _answer(stub.CreateOrder, again, other) == expected
    assert _answer(stub.CreateOrder, replayed, other) == expected, "another's request_id is no way in"
    for caller in (who, system.admin()):
        assert _refused(stub.CreateOrder, again, caller)[:2] == (
            grpc.StatusCode.ALREADY_EXISTS,
            "ORDER_EXISTS",
        )
    # Nothing changed: the order, its events, and the refused caller's orders and keys.
    assert stub.GetOrder(get, metadata=who, timeout=10) == first
    assert system.published(first.name) == ["OrderCreated"]
    assert _names(system, other) == []
    assert create(system, other, request_id=key).name != first.name, "the refused key was not kept"
    assert create(system, who, order_id=order_id, request_id=key) == first, "the owner's replay"


def test_a_repeated_request_id_returns_the_first_order_even_after_it_moved_on(system: System) -> None:
    _, who = system.user()
    key, order_id = str(uuid.uuid4()), f"declined-{uuid.uuid4().hex[:8]}"
    system.payments.plan(f"orders/{order_id}", Answer("payments/p1", decline="INSUFFICIENT_FUNDS"))
    first = create(system, who, line("X", 1, 100), order_id=order_id, request_id=key)
    system.reaches(first, who, State.STATE_PAYMENT_FAILED)
    again = create(system, who, line("X", 1, 100), order_id=order_id, request_id=key)
    assert again.name == first.name and again.state == State.STATE_PAYMENT_FAILED
    request = pb.CreateOrderRequest(
        order=resources_pb2.Order(lines=[line("X", 2, 100)]), order_id=order_id, request_id=key
    )
    assert _refused(system.stub().CreateOrder, request, who)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REQUEST_ID_REUSED",
    )
    assert _names(system, who) == [first.name]
    # The key is the caller's: another user with the same key places their own order.
    _, other = system.user()
    assert create(system, other, line("X", 1, 100), request_id=key).name != first.name


def test_concurrent_repeats_of_one_key_create_one_order(system: System) -> None:
    _, who = system.user()
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(lambda _: create(system, who, request_id=key).name, range(8)))
    assert len(names) == 1
    assert _names(system, who) == list(names)
    assert system.published(names.pop()) == ["OrderCreated"]


_LINE = line()


def _lines(count: int) -> list[resources_pb2.OrderLine]:
    return [line(f"S{i}") for i in range(count)]


# Fields the contract marks REQUIRED are refused by the kit before the domain sees them.
_MISSING = [
    ("empty-order", {}, {"order"}),
    ("no-lines", {"order": State()}, {"order.lines"}),
    ("empty-sku", {"order": State(lines=[line(sku="")])}, {"order.lines[0].sku"}),
    ("quantity-0", {"order": State(lines=[line(quantity=0)])}, {"order.lines[0].quantity"}),
    (
        "missing-and-bad",
        {"order": State(lines=[line(sku="", quantity=0, amount=-5)]), "order_id": "X", "request_id": "1"},
        {"order.lines[0].sku", "order.lines[0].quantity"},
    ),
]

_BAD = [
    ("101-lines", {"order": State(lines=_lines(101))}, {"order.lines"}),
    ("long-sku", {"order": State(lines=[_LINE, line(sku="x" * 65)])}, {"order.lines[1].sku"}),
    ("control-sku", {"order": State(lines=[line(sku="a\nb")])}, {"order.lines[0].sku"}),
    ("blank-sku", {"order": State(lines=[line(sku=" ")])}, {"order.lines[0].sku"}),
    ("padded-sku", {"order": State(lines=[_LINE, line(sku=" SKU-1 ")])}, {"order.lines[1].sku"}),
    ("inner-space-sku", {"order": State(lines=[line(sku="B 2")])}, {"order.lines[0].sku"}),
    ("lookalike-sku", {"order": State(lines=[line(sku="SKU\u20101")])}, {"order.lines[0].sku"}),
    ("fullwidth-sku", {"order": State(lines=[line(sku="\uff33KU-1")])}, {"order.lines[0].sku"}),
    ("punctuation-first-sku", {"order": State(lines=[line(sku="-SKU")])}, {"order.lines[0].sku"}),
    ("quantity-neg", {"order": State(lines=[line(quantity=-1)])}, {"order.lines[0].quantity"}),
    ("quantity-10001", {"order": State(lines=[line(quantity=10001)])}, {"order.lines[0].quantity"}),
    ("negative-price", {"order": State(lines=[line(amount=-1)])}, {"order.lines[0].unit_price.amount_minor"}),
    (
        "lower-currency",
        {"order": State(lines=[line(currency="eur")])},
        {"order.lines[0].unit_price.currency_code"},
    ),
    (
        "unknown-currency",
        {"order": State(lines=[line(currency="XXX")])},
        {"order.lines[0].unit_price.currency_code"},
    ),
    (
        "mixed-currencies",
        {"order": State(lines=[_LINE, line(currency="USD"), _LINE])},
        {"order.lines[1].unit_price.currency_code"},
    ),
    ("free", {"order": State(lines=[line(amount=0), line(amount=0)])}, {"order.lines"}),
    (
        "total-too-large",
        {"order": State(lines=[line(quantity=10000, amount=10**14)])},
        {"order.lines"},
    ),
    ("bad-order-id", {"order": State(lines=[_LINE]), "order_id": "Bad_Id"}, {"order_id"}),
    ("short-order-id", {"order": State(lines=[_LINE]), "order_id": "abc"}, {"order_id"}),
    ("digit-order-id", {"order": State(lines=[_LINE]), "order_id": "1abc"}, {"order_id"}),
    ("request-id-not-uuid", {"order": State(lines=[_LINE]), "request_id": "not-a-uuid"}, {"request_id"}),
    ("request-id-uuid1", {"order": State(lines=[_LINE]), "request_id": str(uuid.uuid1())}, {"request_id"}),
    (
        "every-problem",
        {
            "order": State(lines=[line(sku="a\tb", quantity=-1, amount=-5)]),
            "order_id": "X",
            "request_id": "1",
        },
        {
            "order.lines[0].sku",
            "order.lines[0].quantity",
            "order.lines[0].unit_price.amount_minor",
            "order_id",
            "request_id",
        },
    ),
]


@pytest.mark.parametrize(("fields", "violations"), [b[1:] for b in _BAD], ids=[b[0] for b in _BAD])
def test_bad_input_is_invalid_argument_and_creates_nothing(
    system: System, fields: dict[str, object], violations: set[str]
) -> None:
    _, who = system.user()
    code, reason, found = _refused(system.stub().CreateOrder, pb.CreateOrderRequest(**fields), who)  # type: ignore[arg-type]
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ORDER_INVALID")
    assert set(found) == violations
    assert _names(system, who) == []


@pytest.mark.parametrize(("fields", "violations"), [b[1:] for b in _MISSING], ids=[b[0] for b in _MISSING])
def test_missing_required_fields_are_named_and_create_nothing(
    system: System, fields: dict[str, object], violations: set[str]
) -> None:
    _, who = system.user()
    code, reason, found = _refused(system.stub().CreateOrder, pb.CreateOrderRequest(**fields), who)  # type: ignore[arg-type]
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    assert set(found) == violations
    assert _names(system, who) == []


def test_cancel_publishes_and_is_then_a_safe_retry(system: System) -> None:
    _, who = system.user()
    order = create(system, who)
    cancelled = system.stub().CancelOrder(
        pb.CancelOrderRequest(name=order.name, etag=order.etag, reason="changed my mind"),
        metadata=who,
        timeout=10,
    )
    assert cancelled.state == State.STATE_CANCELLED and cancelled.cancel_reason == "changed my mind"
    assert (
        cancelled.etag != order.etag and cancelled.update_time.ToDatetime() >= order.update_time.ToDatetime()
    )
    again = system.stub().CancelOrder(
        pb.CancelOrderRequest(name=order.name, etag=order.etag), metadata=who, timeout=10
    )
    assert again == cancelled
    assert system.published(order.name) == ["OrderCreated", "OrderCancelled"]


@pytest.mark.parametrize("sold", [False, True], ids=["held", "sold"])
def test_an_answer_after_the_cancel_changes_nothing(system: System, sold: bool) -> None:
    # The sale was in flight when the order was cancelled: its answer is a no-op (payments
    # voids a hold, or refunds a sale, on OrderCancelled), and nothing is captured.
    _, who = system.user()
    gate = threading.Event()
    payment = f"payments/late-{uuid.uuid4().hex[:8]}"
    order = system.placed(who, Answer(payment, sold=sold, gate=gate))
    eventually(lambda: system.payments.authorizations_of(order.name), what="the authorization in flight")
    cancelled = system.stub().CancelOrder(
        pb.CancelOrderRequest(name=order.name, etag=order.etag), metadata=who, timeout=10
    )
    gate.set()
    # The worker's next pass starts once this one (with the late answer) has ended: an order
    # placed now and PAID proves the late answer was handled.
    after = system.placed(who, Answer(f"payments/p-{uuid.uuid4().hex[:8]}"))
    system.reaches(after, who, State.STATE_PAID)
    assert order.name in system.payments.answered
    assert system.order(order, who) == cancelled
    assert system.published(order.name) == ["OrderCreated", "OrderCancelled"]
    assert system.payments.calls_for(payment) == [], "a cancelled order's hold is never captured"


def test_a_stale_etag_is_aborted_and_changes_nothing(system: System) -> None:
    _, who = system.user()
    order = system.placed(who, Answer("payments/voided-stale"))
    system.reaches(order, who, State.STATE_AWAITING_PAYMENT)
    for etag in (order.etag, "garbage"):
        request = pb.CancelOrderRequest(name=order.name, etag=etag)
        assert _refused(system.stub().CancelOrder, request, who)[:2] == (
            grpc.StatusCode.ABORTED,
            "ETAG_MISMATCH",
        )
    current = system.stub().GetOrder(pb.GetOrderRequest(name=order.name), metadata=who, timeout=10)
    assert current.state == State.STATE_AWAITING_PAYMENT and current.payment == "payments/voided-stale"
    cancelled = system.stub().CancelOrder(
        pb.CancelOrderRequest(name=order.name, etag=current.etag), metadata=who, timeout=10
    )
    assert cancelled.state == State.STATE_CANCELLED
    assert system.published(order.name) == ["OrderCreated", "OrderCancelled"]


def test_of_concurrent_cancels_exactly_one_publishes(system: System) -> None:
    _, who = system.user()
    orders = [create(system, who) for _ in range(6)]
    barrier = threading.Barrier(4)

    def cancel(order: resources_pb2.Order) -> resources_pb2.Order:
        barrier.wait(10)
        reply: resources_pb2.Order = system.stub().CancelOrder(
            pb.CancelOrderRequest(name=order.name, etag=order.etag), metadata=who, timeout=10
        )
        return reply

    for order in orders:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(cancel, [order] * 4))
        assert {r.state for r in replies} == {State.STATE_CANCELLED}
        assert len({r.etag for r in replies}) == 1
        assert system.published(order.name) == ["OrderCreated", "OrderCancelled"]


def test_payment_failed_ends_the_order_and_it_cannot_be_cancelled(system: System) -> None:
    _, who = system.user()
    order = system.placed(who, Answer("payments/f1", decline="INSUFFICIENT_FUNDS"))
    failed = system.reaches(order, who, State.STATE_PAYMENT_FAILED)
    assert (failed.failure_reason, failed.payment) == ("INSUFFICIENT_FUNDS", "payments/f1")
    assert system.published(order.name) == ["OrderCreated", "OrderPaymentFailed"]
    request = pb.CancelOrderRequest(name=order.name)
    assert _refused(system.stub().CancelOrder, request, who)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ORDER_NOT_CANCELLABLE",
    )


def test_the_saga_authorizes_captures_then_pays_then_fulfils(system: System) -> None:
    _, who = system.user()
    payment = f"payments/down-{uuid.uuid4().hex[:12]}"
    order = system.placed(who, Answer(payment), line("A", 3, 250))
    awaiting = system.reaches(order, who, State.STATE_AWAITING_PAYMENT)
    assert awaiting.payment == payment
    # Asked once, for the owner and the total, with the order's own idempotency key.
    [asked] = system.payments.authorizations_of(order.name)
    assert (asked.owner, asked.amount, asked.account, asked.capture) == (order.owner, order.total, "", True)
    assert asked.request_id == str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/sale"))
    # The worker captures at once, with one idempotency key, and retries after UNAVAILABLE.
    calls = eventually(
        lambda: c if len(c := system.payments.calls_for(payment)) >= 2 else None, what="2 captures"
    )
    assert set(calls) == {str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/capture"))}
    fulfil = pb.FulfillOrderRequest(name=order.name)
    assert _refused(system.stub().FulfillOrder, fulfil, system.admin())[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ORDER_NOT_FULFILLABLE",
    )
    # Payments answers the next try: that answer makes the order PAID (no event needed).
    system.payments.healed.add(payment)

    def paid_order() -> resources_pb2.Order | None:
        found = system.stub().GetOrder(pb.GetOrderRequest(name=order.name), metadata=who, timeout=10)
        return found if found.state == State.STATE_PAID else None

    paid = eventually(paid_order, timeout=30, what="the order PAID on the capture's answer")
    assert system.sql("SELECT next_payment_at FROM orders WHERE id = :id", id=order.name[7:]) == [(None,)]
    assert _refused(system.stub().FulfillOrder, fulfil, who)[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_MISSING",
    )
    fulfilled = system.stub().FulfillOrder(
        pb.FulfillOrderRequest(name=order.name, etag=paid.etag), metadata=system.admin(), timeout=10
    )
    assert fulfilled.state == State.STATE_FULFILLED
    assert system.stub().FulfillOrder(fulfil, metadata=system.admin(), timeout=10) == fulfilled
    assert system.published(order.name) == ["OrderCreated", "OrderPaid", "OrderFulfilled"]
    assert _refused(system.stub().CancelOrder, pb.CancelOrderRequest(name=order.name), who)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ORDER_NOT_CANCELLABLE",
    )


def test_a_sale_pays_the_order_with_one_call(system: System) -> None:
    _, who = system.user()
    payment = f"payments/s-{uuid.uuid4().hex[:12]}"
    order = system.placed(who, Answer(payment, sold=True))
    paid = system.reaches(order, who, State.STATE_PAID)
    assert paid.payment == payment
    [asked] = system.payments.authorizations_of(order.name)
    assert asked.capture, "asked as a sale"
    assert system.payments.calls_for(payment) == [], "nothing left to capture"
    assert system.published(order.name) == ["OrderCreated", "OrderPaid"]


def test_a_capture_refused_as_voided_is_not_retried(system: System) -> None:
    _, who = system.user()
    payment = f"payments/voided-{uuid.uuid4().hex[:8]}"
    order = system.placed(who, Answer(payment))
    eventually(lambda: system.payments.calls_for(payment), what="a capture call")
    query = "SELECT next_payment_at, payment_attempts FROM orders WHERE id = :id"
    eventually(lambda: system.sql(query, id=order.name[7:]) == [(None, 1)], what="the capture to stop")
    assert len(system.payments.calls_for(payment)) == 1


def test_another_users_order_and_a_missing_one_are_permission_denied_alike(system: System) -> None:
    # AIP-211: permission before existence, so "not yours" and "not there" get the same
    # PERMISSION_DENIED naming only the order asked for, and order ids cannot be enumerated.
    owner_name, owner = system.user()
    _, thief = system.user()
    order = create(system, owner)
    stub = system.stub()
    for name in (order.name, "orders/does-not-exist"):
        for call, request in (
            (stub.GetOrder, pb.GetOrderRequest(name=name)),
            (stub.CancelOrder, pb.CancelOrderRequest(name=name)),
            (stub.WatchOrder, pb.WatchOrderRequest(name=name)),
        ):
            with pytest.raises(grpc.RpcError) as failed:
                answer = call(request, metadata=thief, timeout=10)  # type: ignore[operator]
                if hasattr(answer, "__next__"):
                    next(answer)  # a stream fails on its first message
            found = refusal(failed.value)
            assert (found.code, found.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_OWNER"), request
            assert found.message == f"the caller may not access {name}"
            assert found.metadata == {"resource": name} and owner_name not in found.message
    get = pb.GetOrderRequest(name=order.name)
    fulfil = pb.FulfillOrderRequest(name=order.name)
    assert _refused(system.stub().FulfillOrder, fulfil, owner)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert system.stub().GetOrder(get, metadata=owner, timeout=10).state == State.STATE_PENDING
    # An admin may read it.
    assert system.stub().GetOrder(get, metadata=system.admin(), timeout=10).name == order.name


@pytest.mark.parametrize(
    "name",
    ["", "orders/", "users/abc", "orders/a/b", "orders/" + "x" * 80],
    ids=["empty", "no-id", "other", "nested", "long"],
)
def test_bad_names_are_invalid_argument(system: System, name: str) -> None:
    _, who = system.user()
    stub = system.stub()
    # An empty name breaks the contract's REQUIRED rule (kit); any other bad one, the name's shape.
    expected = (
        ("REQUIRED_FIELD_MISSING", {"name": "is required"})
        if not name
        else (
            "NAME_INVALID",
            {"name": "must be orders/{id}"},
        )
    )
    for call, request in (
        (stub.GetOrder, pb.GetOrderRequest(name=name)),
        (stub.CancelOrder, pb.CancelOrderRequest(name=name)),
        (stub.FulfillOrder, pb.FulfillOrderRequest(name=name)),
    ):
        caller = system.admin() if call is stub.FulfillOrder else who
        assert _refused(call, request, caller)[:3] == (grpc.StatusCode.INVALID_ARGUMENT, *expected)
    with pytest.raises(grpc.RpcError) as failed:
        next(iter(stub.WatchOrder(pb.WatchOrderRequest(name=name), metadata=who, timeout=10)))
    assert refusal(failed.value).code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_orders_are_not_found_for_an_admin_only(system: System) -> None:
    _, who = system.user()
    request = pb.GetOrderRequest(name="orders/nowhere-to-be-found")
    assert _refused(system.stub().GetOrder, request, system.admin())[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "ORDER_NOT_FOUND",
    )
    assert _refused(system.stub().GetOrder, request, who)[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_OWNER",
    )


@pytest.mark.parametrize(
    "reason",
    ["x" * 501, "late\x00", "changed my mind\r\nX-Injected: 1", "\u202eevil", "zero\u200bwidth"],
    ids=["long", "nul", "line-break", "bidi", "zero-width"],
)
def test_a_bad_cancel_reason_is_invalid(system: System, reason: str) -> None:
    _, who = system.user()
    order = create(system, who)
    request = pb.CancelOrderRequest(name=order.name, reason=reason)
    code, found, violations = _refused(system.stub().CancelOrder, request, who)
    assert (code, found) == (grpc.StatusCode.INVALID_ARGUMENT, "CANCEL_REASON_INVALID")
    assert set(violations) == {"reason"}
    assert system.published(order.name) == ["OrderCreated"]


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (InvalidArgument("AUTHORIZE_INVALID", "the authorize request is invalid"), "AUTHORIZE_INVALID"),
        (FailedPrecondition("ORDER_CANCELLED", "the order was cancelled"), "ORDER_CANCELLED"),
    ],
    ids=["invalid-argument", "failed-precondition"],
)
def test_an_authorization_refused_for_good_fails_the_order_with_its_reason(
    system: System, refusal: Exception, reason: str
) -> None:
    _, who = system.user()
    order = system.placed(who, Answer(error=refusal))  # type: ignore[arg-type]
    failed = system.reaches(order, who, State.STATE_PAYMENT_FAILED)
    assert (failed.failure_reason, failed.payment) == (reason, "")
    assert len(system.payments.authorizations_of(order.name)) == 1, "not asked again"
    assert system.published(order.name) == ["OrderCreated", "OrderPaymentFailed"]


def _made_before(payment: str, state: str, failure_reason: str = "") -> Answer:
    """ALREADY_EXISTS, as payments answers for an order whose payment an earlier release made
    from OrderCreated (without the order's authorization key)."""
    refusal = AlreadyExists(
        "ORDER_ALREADY_AUTHORIZED",
        "{order} already has payments/{payment}",
        payment=payment,
        state=state,
        failure_reason=failure_reason,
    )
    return Answer(error=refusal)


@pytest.mark.parametrize(("state", "captures"), [("AUTHORIZED", 1), ("CAPTURED", 0)], ids=["held", "taken"])
def test_a_payment_made_before_the_upgrade_is_the_orders_payment(
    system: System, state: str, captures: int
) -> None:
    # An order placed by an earlier release had its payment authorized from OrderCreated, or
    # held with the key of ``/authorize``: payments answers the sale ALREADY_EXISTS naming
    # it. A hold is captured next; a payment captured since is not captured again.
    _, who = system.user()
    payment = f"old-{uuid.uuid4().hex[:8]}"
    order = system.placed(who, _made_before(payment, state))
    paid = system.reaches(order, who, State.STATE_PAID)
    assert paid.payment == f"payments/{payment}"
    capture_key = str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/capture"))
    assert system.payments.calls_for(f"payments/{payment}") == [capture_key] * captures


def test_a_decline_made_before_the_upgrade_fails_the_order_with_its_reason(system: System) -> None:
    # Payments declined the order from OrderCreated, and its PaymentFailed went to the earlier
    # release: ALREADY_EXISTS says the payment FAILED, so nothing is captured.
    _, who = system.user()
    payment = f"old-{uuid.uuid4().hex[:8]}"
    order = system.placed(who, _made_before(payment, "FAILED", "INSUFFICIENT_FUNDS"))
    failed = system.reaches(order, who, State.STATE_PAYMENT_FAILED)
    assert (failed.payment, failed.failure_reason) == (f"payments/{payment}", "INSUFFICIENT_FUNDS")
    assert system.payments.calls_for(f"payments/{payment}") == []
    assert system.published(order.name) == ["OrderCreated", "OrderPaymentFailed"]


def test_an_authorization_payments_cannot_answer_is_asked_again_with_one_key(system: System) -> None:
    _, who = system.user()
    order = system.placed(who)  # no plan: payments is down for it
    query = "SELECT state, payment_attempts FROM orders WHERE id = :id"
    eventually(lambda: system.sql(query, id=order.name[7:]) == [("PENDING", 2)], what="two failed tries")
    assert system.order(order, who).etag == order.etag, "a retry is no change of the order"
    system.payments.plan(order.name, Answer(f"payments/p-{uuid.uuid4().hex[:8]}"))
    system.reaches(order, who, State.STATE_PAID)
    keys = {asked.request_id for asked in system.payments.authorizations_of(order.name)}
    assert keys == {str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/sale"))}
    assert system.published(order.name) == ["OrderCreated", "OrderPaid"]


def test_the_payment_worker_backs_off_and_resumes_after_a_restart(system: System) -> None:
    _, who = system.user()
    payment = f"payments/down-{uuid.uuid4().hex[:8]}"
    order = system.placed(who, Answer(payment))
    query = "SELECT payment_attempts FROM orders WHERE id = :id"
    eventually(lambda: system.sql(query, id=order.name[7:]) == [(2,)], what="two failed capture tries")
    system.deployment.restart("orders")
    system.payments.healed.add(payment)
    eventually(lambda: payment in system.payments.captured, timeout=30, what="the capture after the restart")
    assert set(system.payments.calls_for(payment)) == {
        str(uuid.uuid5(uuid.NAMESPACE_URL, order.name + "/capture"))
    }
