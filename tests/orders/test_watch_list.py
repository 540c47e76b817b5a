"""WatchOrder streams and ListOrders pages, against the orders process."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import grpc
import pytest

from poly.orders.v1 import orders_service_pb2 as pb
from poly.orders.v1 import resources_pb2
from tests.orders.conftest import Answer, System, create
from tests.support.status import refusal
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

State = resources_pb2.Order


def test_watch_streams_each_change_and_ends_at_a_terminal_state(system: System) -> None:
    _, who = system.user()
    asked = threading.Event()  # the authorization is answered once the watch has begun
    order = system.placed(who, Answer(f"payments/{uuid.uuid4().hex[:10]}", gate=asked))
    stream = system.stub().WatchOrder(pb.WatchOrderRequest(name=order.name), metadata=who, timeout=30)
    seen: list[pb.WatchOrderResponse] = []
    reader = threading.Thread(target=lambda: seen.extend(stream), daemon=True)
    reader.start()
    eventually(lambda: len(seen) == 1, what="the first snapshot")
    asked.set()
    # The capture is answered at once: the hold is recorded with it, so PAID follows PENDING.
    eventually(lambda: len(seen) == 2, what="the PAID snapshot")
    system.stub().FulfillOrder(pb.FulfillOrderRequest(name=order.name), metadata=system.admin(), timeout=10)
    reader.join(10)
    assert not reader.is_alive(), "the stream ends after a terminal state"
    assert [r.order.state for r in seen] == [
        State.STATE_PENDING,
        State.STATE_PAID,
        State.STATE_FULFILLED,
    ]
    assert all(r.change_time == r.order.update_time for r in seen)
    assert seen[0].order == order
    assert len({r.order.etag for r in seen}) == 3


def test_watching_a_terminal_order_sends_one_snapshot(system: System) -> None:
    _, who = system.user()
    order = create(system, who)
    cancelled = system.stub().CancelOrder(pb.CancelOrderRequest(name=order.name), metadata=who, timeout=10)
    replies = list(system.stub().WatchOrder(pb.WatchOrderRequest(name=order.name), metadata=who, timeout=10))
    assert [r.order for r in replies] == [cancelled]


def _watching(
    system: System, name: str, who: list[tuple[str, str]], *until: State.State.ValueType
) -> tuple[threading.Thread, list[int]]:
    """A reader of WatchOrder(name, until_states) in a thread, and the states it has seen."""
    request = pb.WatchOrderRequest(name=name, until_states=until)
    stream = system.stub().WatchOrder(request, metadata=who, timeout=30)
    seen: list[int] = []
    reader = threading.Thread(target=lambda: seen.extend(r.order.state for r in stream), daemon=True)
    reader.start()
    eventually(lambda: seen, what="the first snapshot")
    return reader, seen


def test_a_watch_until_paid_ends_after_the_paid_snapshot(system: System) -> None:
    _, who = system.user()
    asked = threading.Event()
    order = system.placed(who, Answer(f"payments/{uuid.uuid4().hex[:10]}", gate=asked))
    reader, seen = _watching(system, order.name, who, State.STATE_PAID)
    asked.set()
    reader.join(10)
    assert not reader.is_alive(), "the stream ends after the PAID snapshot"
    assert seen[0] == State.STATE_PENDING and seen[-1] == State.STATE_PAID
    assert set(seen) <= {State.STATE_PENDING, State.STATE_AWAITING_PAYMENT, State.STATE_PAID}
    # Already PAID: the first snapshot is the last.
    request = pb.WatchOrderRequest(name=order.name, until_states=[State.STATE_FULFILLED, State.STATE_PAID])
    again = list(system.stub().WatchOrder(request, metadata=who, timeout=10))
    assert [r.order.state for r in again] == [State.STATE_PAID]


def test_a_watch_until_paid_still_ends_at_a_terminal_state(system: System) -> None:
    _, who = system.user()
    order = create(system, who)
    reader, seen = _watching(system, order.name, who, State.STATE_PAID)
    system.stub().CancelOrder(pb.CancelOrderRequest(name=order.name), metadata=who, timeout=10)
    reader.join(10)
    assert not reader.is_alive(), "the stream ends after a terminal state"
    assert seen == [State.STATE_PENDING, State.STATE_CANCELLED]


@pytest.mark.parametrize(
    ("until", "fields"),
    [
        ([State.STATE_UNSPECIFIED], {"until_states[0]"}),
        ([State.STATE_PAID, State.STATE_UNSPECIFIED], {"until_states[1]"}),
        ([42], {"until_states[0]"}),
        ([State.STATE_PAID] * 7, {"until_states"}),
    ],
    ids=["unspecified", "unspecified-second", "unknown-number", "too-many"],
)
def test_until_states_must_be_states(system: System, until: list[int], fields: set[str]) -> None:
    _, who = system.user()
    order = create(system, who)
    request = pb.WatchOrderRequest(name=order.name, until_states=until)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as failed:
        list(system.stub().WatchOrder(request, metadata=who, timeout=10))
    found = refusal(failed.value)
    assert (found.code, found.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNTIL_STATES_INVALID")
    assert set(found.violations) == fields


def test_the_clients_deadline_ends_a_watch_promptly(system: System) -> None:
    _, who = system.user()
    order = create(system, who)
    started = time.monotonic()
    stream = system.stub().WatchOrder(pb.WatchOrderRequest(name=order.name), metadata=who, timeout=1.5)
    received = []
    with pytest.raises(grpc.RpcError) as ended:
        for reply in stream:
            received.append(reply)
    assert refusal(ended.value).code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [r.order.state for r in received] == [State.STATE_PENDING]
    assert time.monotonic() - started < 5


def test_a_client_cancel_ends_the_watch(system: System) -> None:
    _, who = system.user()
    order = create(system, who)
    stream = system.stub().WatchOrder(pb.WatchOrderRequest(name=order.name), metadata=who, timeout=30)
    first = next(stream)
    assert first.order.state == State.STATE_PENDING
    stream.cancel()
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert refusal(ended.value).code == grpc.StatusCode.CANCELLED


def _all_pages(system: System, who: list[tuple[str, str]], size: int, **fields: str) -> tuple[list[str], int]:
    names: list[str] = []
    token, pages = "", 0
    while True:
        request = pb.ListOrdersRequest(page_size=size, page_token=token, **fields)
        reply = system.stub().ListOrders(request, metadata=who, timeout=10)
        names += [o.name for o in reply.orders]
        pages += 1
        token = reply.next_page_token
        if not token:
            return names, pages


@pytest.mark.parametrize(
    "order_by", ["", "create_time desc", "create_time asc"], ids=["default", "desc", "asc"]
)
def test_pages_have_no_duplicates_and_no_gaps_under_concurrent_inserts(system: System, order_by: str) -> None:
    _, who = system.user()
    before = {create(system, who).name for _ in range(23)}
    stop = threading.Event()
    added: list[str] = []

    def insert() -> None:
        while not stop.is_set():
            added.append(create(system, who).name)

    writer = threading.Thread(target=insert, daemon=True)
    writer.start()
    try:
        names, pages = _all_pages(system, who, 4, order_by=order_by)
    finally:
        stop.set()
        writer.join(10)
    assert pages >= 6 and added
    assert len(names) == len(set(names)), "no order is served twice"
    assert before <= set(names), "every order that existed before the listing is served"
    assert set(names) <= before | set(added)


def test_a_user_lists_only_their_own_orders_and_an_admin_lists_all(system: System) -> None:
    alice, alice_who = system.user()
    bob, bob_who = system.user()
    mine = [create(system, alice_who).name for _ in range(3)]
    theirs = create(system, bob_who).name
    names, _ = _all_pages(system, alice_who, 2, order_by="create_time asc")
    assert names == mine
    # Filtering on another owner never widens a plain user's view.
    assert _all_pages(system, alice_who, 10, filter=f'owner = "{bob}"')[0] == []
    admin_view, _ = _all_pages(system, system.admin(), 1000, filter=f'owner = "{alice}"')
    assert admin_view == list(reversed(mine))
    assert theirs in _all_pages(system, system.admin(), 1000)[0]


def test_filters_on_state_and_time(system: System) -> None:
    _, who = system.user()
    kept = create(system, who)
    dropped = create(system, who)
    system.stub().CancelOrder(pb.CancelOrderRequest(name=dropped.name), metadata=who, timeout=10)
    assert _all_pages(system, who, 10, filter="state = CANCELLED")[0] == [dropped.name]
    assert _all_pages(system, who, 10, filter="state = STATE_PENDING")[0] == [kept.name]
    assert _all_pages(system, who, 10, filter="state != PENDING AND state != CANCELLED")[0] == []
    since = kept.create_time.ToJsonString()
    assert _all_pages(system, who, 10, filter=f'create_time > "{since}"')[0] == [dropped.name]
    updated, _ = _all_pages(system, who, 10, order_by="update_time desc", filter=f'update_time >= "{since}"')
    assert updated == [dropped.name, kept.name]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"filter": "state = SHIPPED"}, "filter"),
        ({"filter": "colour = red"}, "filter"),
        ({"filter": 'create_time > "yesterday"'}, "filter"),
        ({"filter": "state > PAID"}, "filter"),
        ({"order_by": "total desc"}, "order_by"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "bm90IGEgdG9rZW4"}, "page_token"),
    ],
    ids=[
        "unknown-state",
        "unknown-field",
        "bad-time",
        "bad-operator",
        "bad-order-by",
        "negative-size",
        "bad-token",
    ],
)
def test_bad_list_requests_are_invalid_argument(
    system: System, fields: dict[str, object], field: str
) -> None:
    _, who = system.user()
    with pytest.raises(grpc.RpcError) as failed:
        system.stub().ListOrders(pb.ListOrdersRequest(**fields), metadata=who, timeout=10)  # type: ignore[arg-type]
    found = refusal(failed.value)
    assert found.code == grpc.StatusCode.INVALID_ARGUMENT and set(found.violations) == {field}


def test_a_page_token_is_bound_to_its_filter(system: System) -> None:
    _, who = system.user()
    for _ in range(3):
        create(system, who)
    first = system.stub().ListOrders(pb.ListOrdersRequest(page_size=1), metadata=who, timeout=10)
    assert first.next_page_token
    request = pb.ListOrdersRequest(page_size=1, page_token=first.next_page_token, filter="state = PAID")
    with pytest.raises(grpc.RpcError) as failed:
        system.stub().ListOrders(request, metadata=who, timeout=10)
    assert refusal(failed.value).reason == "PAGE_TOKEN_INVALID"


@pytest.mark.parametrize(
    "position",
    [["yesterday", "o1"], ["2026-03-01T12:00:00", "o1"], ["2026-03-01T12:00:00+00:00"], ["x\u0000", "o1"]],
    ids=["not-a-time", "naive-time", "too-short", "nul"],
)
def test_a_forged_page_token_is_invalid_argument_not_a_server_error(
    system: System, position: list[str]
) -> None:
    # The token's hash binds it to the request, but holds no secret: a client can re-encode
    # any position under the hash of a real token.
    _, who = system.user()
    for _ in range(2):
        create(system, who)
    first = system.stub().ListOrders(pb.ListOrdersRequest(page_size=1), metadata=who, timeout=10)
    real = json.loads(
        base64.urlsafe_b64decode(first.next_page_token + "=" * (-len(first.next_page_token) % 4))
    )
    forged = base64.urlsafe_b64encode(json.dumps({"p": position, "h": real["h"]}).encode()).decode()
    request = pb.ListOrdersRequest(page_size=1, page_token=forged)
    with pytest.raises(grpc.RpcError) as failed:
        system.stub().ListOrders(request, metadata=who, timeout=10)
    found = refusal(failed.value)
    assert (found.code, found.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
