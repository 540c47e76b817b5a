"""The RabbitMQ transport (aio-pika), for deployments that want a broker between services.

Topology, all durable and declared idempotently by whoever needs it first:

- one topic exchange per event family, ``<prefix>.events.<family>``, where the family is the
  first word of the event's name (OrderPaid -> ``order``); the routing key is the full type;
- one quorum queue per consuming service, ``<prefix>.<service>``, bound to the types it
  handles, with single-active-consumer (replicas keep per-aggregate order) and a
  dead-letter route to ``<prefix>.<service>.dead`` through the ``<prefix>.dead`` exchange.

`BrokerTransport` is the relay's side: a publish counts only once the broker confirms it.
`BrokerConsumer` is the consuming side: messages are applied one at a time through the
`Consumer` (inbox, one transaction), acknowledged after the commit, retried in place a few
times, then rejected to the dead-letter queue. A forged message is never applied nor
retried: one whose envelope `source` is not the declared publisher of its `type`
(`contract`), or whose ``source`` header disagrees with the envelope, goes straight to the
dead-letter queue carrying its reason in an ``x-poly-reason`` header, and is logged;
`redrive_dead_queue` leaves such messages where they are. Both reconnect with backoff on their own
(``connect_robust``); aio-pika's event loop runs in a thread of its own, so the rest of the
service stays on the thread-pool model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage, AbstractRobustConnection
from google.protobuf.message import DecodeError

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import contract
from services.kit.bus.consumer import Consumer, is_transient_database_error
from services.kit.bus.transport import DeliveryError
from services.kit.config import redact_url

__all__ = [
    "REASON_HEADER",
    "SOURCE_MISMATCH",
    "BrokerConsumer",
    "BrokerTransport",
    "dead_queue_name",
    "exchange_name",
    "queue_name",
    "redrive_dead_queue",
]

_log = logging.getLogger("poly.bus.broker")
_T = TypeVar("_T")

REASON_HEADER = "x-poly-reason"
"""Header of a message the consumer refused and dead-lettered itself: why (UPPER_SNAKE)."""

SOURCE_MISMATCH = "EVENT_SOURCE_MISMATCH"
"""Dead-letter reason: the message's ``source`` header is not its envelope's source."""

_REFUSALS = frozenset({contract.NOT_PUBLISHED_BY_CALLER, SOURCE_MISMATCH})
"""Reasons that will hold on every redelivery: `redrive_dead_queue` leaves these messages."""


def exchange_name(event_type: str, prefix: str = "poly") -> str:
    """``poly.events.v1.PaymentCaptured`` -> ``poly.events.payment``."""
    name = event_type.rsplit(".", 1)[-1]
    match = re.match(r"[A-Z][a-z0-9]*", name)
    family = (match.group(0) if match else name).lower()
    return f"{prefix}.events.{family}"


def queue_name(service: str, prefix: str = "poly") -> str:
    return f"{prefix}.{service}"


def dead_queue_name(service: str, prefix: str = "poly") -> str:
    return f"{prefix}.{service}.dead"


class _LoopThread:
    """An asyncio loop of its own in a daemon thread, driven from synchronous code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class BrokerTransport:
    """Publishes each event to its family exchange with publisher confirms."""

    def __init__(self, url: str, *, prefix: str = "poly", timeout: float = 10.0) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._loop = _LoopThread("bus-broker-publisher")
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._setup: asyncio.Lock | None = None

    async def _exchange(self, event_type: str) -> AbstractExchange:
        name = exchange_name(event_type, self._prefix)
        if self._setup is None:
            self._setup = asyncio.Lock()  # created on the loop's own thread
        async with self._setup:  # concurrent sends share one connection, channel and declaration
            if self._connection is None:
                self._connection = await aio_pika.connect_robust(self._url, timeout=self._timeout)
            if self._channel is None or self._channel.is_closed:
                # Returned (unroutable) messages raise: no queue is bound for the type yet, and
                # a confirm alone would let the relay mark an event delivered that went nowhere.
                self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
                self._exchanges.clear()
            if name not in self._exchanges:
                self._exchanges[name] = await self._channel.declare_exchange(
                    name, aio_pika.ExchangeType.TOPIC, durable=True, timeout=self._timeout
                )
            return self._exchanges[name]

    async def _reset(self) -> None:
        """Drop the channel after a failure (on the loop, under the set-up lock)."""
        if self._setup is None:
            return
        async with self._setup:
            channel, self._channel = self._channel, None
            self._exchanges.clear()
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _publish(self, envelope: EventEnvelope) -> None:
        try:
            await self._publish_once(envelope)
        except BaseException:
            await self._reset()
            raise

    async def _publish_once(self, envelope: EventEnvelope) -> None:
        exchange = await self._exchange(envelope.type)
        message = aio_pika.Message(
            body=envelope.SerializeToString(),
            message_id=envelope.id,
            type=envelope.type,
            content_type="application/x-protobuf",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={"aggregate_id": envelope.aggregate_id, "source": envelope.source},
        )
        await exchange.publish(message, routing_key=envelope.type, mandatory=True, timeout=self._timeout)

    def send(self, route: str, envelope: EventEnvelope) -> None:
        try:
            self._loop.run(self._publish(envelope), self._timeout + 1)
        except aio_pika.exceptions.DeliveryError:
            # Confirmed but unroutable: nobody consumes the type yet. Not transient: it counts
            # towards dead-lettering, and `poly bus redrive` sends it once a consumer exists.
            raise DeliveryError(f"{route}: no queue is bound for {envelope.type}") from None
        except Exception as error:  # noqa: BLE001 - any other failure: the broker is away or slow
            raise DeliveryError(
                f"{route} {redact_url(self._url)}: {type(error).__name__}: {error}", transient=True
            ) from None

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._loop.run(self._connection.close(), 5)
            except Exception:  # noqa: BLE001 - closing a connection that is already gone
                _log.debug("broker connection already closed")
        self._loop.close()


def _header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _refusal(message: AbstractIncomingMessage, envelope: EventEnvelope) -> str | None:
    """Why `message` must never be applied, or None. The broker cannot say who published a
    message, so it is checked for what it claims: the ``source`` header `BrokerTransport`
    sets must be the envelope's source, and that source the declared publisher of the type."""
    if _header(message, "source") != envelope.source:
        return SOURCE_MISMATCH
    if not contract.may_publish(envelope.source, envelope.type):
        return contract.NOT_PUBLISHED_BY_CALLER
    return None


class BrokerConsumer:
    """Consumes the service's queue and applies each event once, in order (a `Background`)."""

    def __init__(
        self,
        url: str,
        service: str,
        consumer: Consumer,
        *,
        prefix: str = "poly",
        prefetch: int = 32,
        attempts: int = 3,
        retry_delay: float = 0.1,
        connect_wait: float = 10.0,
    ) -> None:
        self._url = url
        self._service = service
        self._consumer = consumer
        self._prefix = prefix
        self._prefetch = prefetch
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._connect_wait = connect_wait
        self._loop: _LoopThread | None = None
        self._connection: AbstractRobustConnection | None = None
        self._work: asyncio.Queue[AbstractIncomingMessage] | None = None
        self._dead_exchange: AbstractExchange | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = threading.Event()
        """Set once the queue is declared, bound and being consumed."""

    async def _connect_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._setup()
                return
            except Exception as error:  # noqa: BLE001 - broker not reachable yet: back off and retry
                _log.warning(
                    "broker not reachable; retrying",
                    extra={"url": redact_url(self._url), "error": type(error).__name__},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _setup(self) -> None:
        connection = await aio_pika.connect_robust(self._url, timeout=10)
        try:
            await self._declare_and_consume(connection)
        except BaseException:
            await connection.close()  # never leak a robust connection that keeps reconnecting
            raise
        self._connection = connection

    async def _declare_and_consume(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        dead_exchange = await channel.declare_exchange(
            f"{self._prefix}.dead", aio_pika.ExchangeType.DIRECT, durable=True
        )
        dead = await channel.declare_queue(
            dead_queue_name(self._service, self._prefix), durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(dead_exchange, routing_key=self._service)
        self._dead_exchange = dead_exchange
        queue = await channel.declare_queue(
            queue_name(self._service, self._prefix),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-single-active-consumer": True,
                "x-dead-letter-exchange": f"{self._prefix}.dead",
                "x-dead-letter-routing-key": self._service,
            },
        )
        for event_type in self._consumer.event_types:
            exchange = await channel.declare_exchange(
                exchange_name(event_type, self._prefix), aio_pika.ExchangeType.TOPIC, durable=True
            )
            await queue.bind(exchange, routing_key=event_type)
        work = self._work
        assert work is not None
        # aio-pika runs callbacks as concurrent tasks; one worker keeps the queue's order.
        await queue.consume(work.put)
        self.ready.set()
        _log.info("consuming", extra={"queue": queue.name, "event_types": self._consumer.event_types})

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = EventEnvelope.FromString(message.body)
        except DecodeError:
            _log.error("undecodable message dead-lettered", extra={"message_id": message.message_id})
            await message.reject(requeue=False)
            return
        refusal = _refusal(message, envelope)
        if refusal is not None:
            await self._refuse(message, envelope, refusal)
            return
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                await loop.run_in_executor(None, self._consumer.apply, envelope)
            except contract.EventNotPublishedByCaller:
                await self._refuse(message, envelope, contract.NOT_PUBLISHED_BY_CALLER)
                return
            except Exception as error:  # noqa: BLE001 - retried here, then dead-lettered below
                transient = is_transient_database_error(error)
                if not transient:
                    attempt += 1
                _log.warning(
                    "event handler failed",
                    extra={
                        "event_id": envelope.id,
                        "attempt": attempt,
                        "transient": transient,
                        "error": type(error).__name__,
                    },
                )
                if attempt >= self._attempts:
                    break
                # Our own database being away is nobody's poison: wait for it, keeping order.
                await asyncio.sleep(min(self._retry_delay * 2**attempt, 5.0))
                continue
            await message.ack()
            return
        await message.reject(requeue=False)  # to <prefix>.<service>.dead; later events go on

    async def _refuse(self, message: AbstractIncomingMessage, envelope: EventEnvelope, reason: str) -> None:
        """Dead-letter a forged message at once, with `reason` on it: never applied, never retried."""
        known = contract.publisher_of(envelope.type) is not None
        self._consumer.metrics.add("refused", envelope.type if known else "unknown")
        _log.warning(
            "event refused and dead-lettered",
            extra={
                "event_id": envelope.id,
                "event_type": envelope.type,
                "source": envelope.source,
                "source_header": _header(message, "source"),
                "reason": reason,
                "dead_queue": dead_queue_name(self._service, self._prefix),
            },
        )
        dead_exchange = self._dead_exchange
        assert dead_exchange is not None
        # Published (with the channel's confirm) before the original is acknowledged: a crash
        # in between redelivers the message, which is refused again, never lost or applied.
        await dead_exchange.publish(
            aio_pika.Message(
                body=message.body,
                message_id=message.message_id,
                type=message.type,
                content_type=message.content_type,
                headers={**dict(message.headers or {}), REASON_HEADER: reason},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=self._service,
        )
        await message.ack()

    async def _worker(self) -> None:
        work = self._work
        assert work is not None
        while True:
            message = await work.get()
            try:
                await self._handle(message)
            except Exception:  # noqa: BLE001 - e.g. an ack on a channel lost meanwhile: redelivered later
                _log.exception("event not acknowledged; the broker will redeliver it")

    def start(self) -> None:
        self._loop = _LoopThread(f"bus-broker-{self._service}")

        async def begin() -> None:
            self._work = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._worker()), asyncio.create_task(self._connect_forever())]

        self._loop.run(begin(), 5)
        if not self.ready.wait(self._connect_wait):
            _log.warning("not consuming yet; still connecting in the background")

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None:
            return

        async def end() -> None:
            for task in self._tasks:
                task.cancel()
            if self._connection is not None:
                await self._connection.close()

        try:
            self._loop.run(end(), timeout)
        except Exception:  # noqa: BLE001 - shutting down: the broker may be gone already
            _log.debug("broker consumer closed uncleanly")
        self._loop.close()


def redrive_dead_queue(url: str, service: str, *, prefix: str = "poly", limit: int = 10_000) -> int:
    """Move the messages of the service's dead-letter queue back to its queue; returns how many.

    Messages the consumer refused as forged (an ``x-poly-reason`` of `contract`'s
    ``EVENT_TYPE_NOT_PUBLISHED_BY_CALLER`` or ``EVENT_SOURCE_MISMATCH``) would only be refused
    again: they stay in the dead-letter queue, as evidence. Each message present when the
    redrive starts is looked at once, so one that comes back meanwhile is not moved twice."""

    async def move() -> int:
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            dead = await channel.declare_queue(
                dead_queue_name(service, prefix), durable=True, arguments={"x-queue-type": "quorum"}
            )
            present = int(dead.declaration_result.message_count or 0)
            moved = 0
            for _ in range(min(present, limit)):
                message = await dead.get(fail=False, no_ack=False, timeout=10)
                if message is None:
                    break
                refused = _header(message, REASON_HEADER) in _REFUSALS
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        body=message.body,
                        message_id=message.message_id,
                        type=message.type,
                        content_type=message.content_type,
                        headers=dict(message.headers or {}),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    # A refused message goes to the back of the dead-letter queue, not home.
                    routing_key=dead.name if refused else queue_name(service, prefix),
                )
                await message.ack()
                moved += 0 if refused else 1
            return moved

    return asyncio.run(move())
