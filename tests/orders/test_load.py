"""Orders under mixed load, against the orders process on SQLite and PostgreSQL: reads never
fail because writes are running (a read takes no write lock), and many open watches all see
each change. Bounded in calls and time; counts outcomes, asserts no timings."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from poly.orders.v1 import orders_service_pb2 as pb
from poly.orders.v1 import resources_pb2
from tests.orders.conftest import Answer, System, create, line
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

READERS = 32
READS_EACH = 25
WRITERS = 4
ORDERS_EACH = 10
WATCHES = 200

State = resources_pb2.Order


def _outcomes(calls: int, workers: int, call: Callable[[], object]) -> Counter[str]:
    """Run `call` `calls` times on `workers` threads; how many ended with each gRPC code."""

    def one(_: int) -> str:
        try:
            call()
        except grpc.RpcError as error:
            return error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"
        return "OK"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return Counter(pool.map(one, range(calls)))


def test_reads_do_not_fail_while_orders_are_placed(system: System) -> None:
    _, who = system.user()
    order = create(system, who, line("A"), line("B"), line("C"))
    stub = system.stub()
    writes: Counter[str] = Counter()

    def read() -> None:
        assert stub.GetOrder(pb.GetOrderRequest(name=order.name), metadata=who, timeout=30) == order

    def place() -> None:
        request = pb.CreateOrderRequest(
            order=resources_pb2.Order(lines=[line()]), request_id=str(uuid.uuid4())
        )
        stub.CreateOrder(request, metadata=who, timeout=30)

    writer = threading.Thread(
        target=lambda: writes.update(_outcomes(WRITERS * ORDERS_EACH, WRITERS, place)), daemon=True
    )
    writer.start()
    reads = _outcomes(READERS * READS_EACH, READERS, read)
    writer.join(120)
    assert not writer.is_alive()
    assert reads == Counter({"OK": READERS * READS_EACH})
    assert writes == Counter({"OK": WRITERS * ORDERS_EACH})


def test_many_open_watches_each_see_every_change(system: System) -> None:
    _, who = system.user()
    asked = threading.Event()  # its authorization is answered once every watch has begun
    order = system.placed(who, Answer(f"payments/{uuid.uuid4().hex[:10]}", gate=asked))
    until = [State.STATE_PAID]
    seen: list[list[int]] = [[] for _ in range(WATCHES)]
    errors: Counter[str] = Counter()
    streams = [
        system.stub().WatchOrder(
            pb.WatchOrderRequest(name=order.name, until_states=until), metadata=who, timeout=60
        )
        for _ in range(WATCHES)
    ]

    def drain(index: int) -> None:
        try:
            for reply in streams[index]:
                seen[index].append(reply.order.state)
        except grpc.RpcError as error:
            errors[error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"] += 1

    readers = [threading.Thread(target=drain, args=(n,), daemon=True) for n in range(WATCHES)]
    for reader in readers:
        reader.start()
    eventually(lambda: all(seen), what="every watch's first snapshot", timeout=60)
    asked.set()
    for reader in readers:
        reader.join(30)
    assert not [reader for reader in readers if reader.is_alive()]
    assert errors == Counter()
    assert {tuple(states) for states in seen} == {(State.STATE_PENDING, State.STATE_PAID)}
