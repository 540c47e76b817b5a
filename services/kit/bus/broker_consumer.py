"""The RabbitMQ transport's consuming side: `BrokerConsumer`, and `redrive_dead_queue`.

`BrokerConsumer` declares the whole topology (`topology`), then consumes its service's queue:
messages are applied one at a time through the `Consumer` (inbox, one transaction),
acknowledged after the commit, retried in place a few times, then rejected to the
dead-letter queue. A forged message is never applied nor retried: one whose envelope
`source` is not the declared publisher of its `type` (`contract`), or whose ``source``
header disagrees with the envelope, goes straight to the dead-letter queue carrying its
reason in an ``x-poly-reason`` header, and is logged; `redrive_dead_queue` leaves such
messages where they are. It reconnects on its own: a robust connection declares the
topology again on reconnect and its queue again if someone deletes it while it consumes,
and (`_RobustChannel`) logs no error for an expected reconnect. It runs in an event loop of
its own thread (`broker.LoopThread`). Each attempt runs under a CONSUMER span whose parent is the
trace context the envelope carries, as the EventSink's does (`tracing`); a refused message
gets one too, ended at once with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from google.protobuf.message import DecodeError
from opentelemetry.trace import TracerProvider

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit.bus import contract, topology
from services.kit.bus.broker import LoopThread
from services.kit.bus.consumer import Consumer, Outcome, is_transient_database_error
from services.kit.bus.topology import dead_exchange_name, dead_queue_name, queue_name
from services.kit.bus.tracing import RABBITMQ, BusTracer, Destination
from services.kit.config import redact_url

__all__ = ["REASON_HEADER", "SOURCE_MISMATCH", "BrokerConsumer", "redrive_dead_queue"]

_log = logging.getLogger("poly.bus.broker")

_RECONNECT_MAX = 2.0
"""Longest wait between the consumer's connection attempts while the broker is away (seconds)."""

REASON_HEADER = "x-poly-reason"
"""Header of a message the consumer refused and dead-lettered itself: why (UPPER_SNAKE)."""

SOURCE_MISMATCH = "EVENT_SOURCE_MISMATCH"
"""Dead-letter reason: the message's ``source`` header is not its envelope's source."""

_REFUSALS = frozenset({contract.NOT_PUBLISHED_BY_CALLER, SOURCE_MISMATCH})
"""Reasons that will hold on every redelivery: `redrive_dead_queue` leaves these messages."""


class _RobustChannel(aio_pika.RobustChannel):
    """aio-pika's robust channel, without its error logs for an expected reconnect.

    When the connection drops, `RobustChannel._on_close` tries to reopen the channel at once,
    on the transport that just died; that fails (aio-pika 10.2 logs it at error level from the
    close callback), and the robust connection reopens the channel when it reconnects anyway.
    A private method of aio-pika's (pinned in constraints.txt); if a release renames it, this
    override no longer runs and the error lines come back: test_broker_consumer notices.
    """

    async def _on_close(self, closing: asyncio.Future[Any]) -> BaseException | None:
        try:
            return await super()._on_close(closing)
        except (RuntimeError, ConnectionError) as error:  # the transport is gone: reopened on reconnect
            _log.info("broker connection lost; reconnecting", extra={"error": type(error).__name__})
            return None


class _RobustConnection(aio_pika.RobustConnection):
    CHANNEL_CLASS = _RobustChannel


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
        name: str | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        """`tracer_provider` makes the consumer spans (the global one by default)."""
        self._url = url
        self._service = service
        self._consumer = consumer
        self._prefix = prefix
        self._prefetch = prefetch
        self._attempts = attempts
        self._retry_delay = retry_delay
        self._connect_wait = connect_wait
        self._name = name or f"{prefix} {service} consumer"
        """The connection's name on the broker (``client_properties.connection_name``)."""
        self._tracer = BusTracer(tracer_provider)
        self._destination = Destination(RABBITMQ, queue_name(service, prefix))
        self._loop: LoopThread | None = None
        self._connection: AbstractRobustConnection | None = None
        self._work: asyncio.Queue[AbstractIncomingMessage] | None = None
        self._dead_exchange: AbstractExchange | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = threading.Event()
        """Set once the topology is declared and the service's queue is being consumed."""

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
                delay = min(delay * 2, _RECONNECT_MAX)

    async def _setup(self) -> None:
        connection = await aio_pika.connect_robust(
            self._url,
            timeout=10,
            client_properties={"connection_name": self._name},
            connection_class=_RobustConnection,
            # Back within a second of the broker: the relays retry within 2 s, so a backlog
            # drains as soon as both ends are back (aio-pika's default waits 5 s).
            reconnect_interval=_RECONNECT_MAX / 2,
        )
        try:
            await self._declare_and_consume(connection)
        except BaseException:
            await connection.close()  # never leak a robust connection that keeps reconnecting
            raise
        self._connection = connection

    async def _declare_and_consume(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        declared = await topology.declare(channel, self._prefix)  # the whole topology, not just ours
        self._dead_exchange = declared.exchanges[dead_exchange_name(self._prefix)]
        queue = declared.queues.get(queue_name(self._service, self._prefix))
        if queue is None:  # the contract lists this service as consuming nothing
            self.ready.set()
            _log.info("nothing to consume", extra={"service": self._service})
            return
        work = self._work
        assert work is not None
        # aio-pika runs callbacks as concurrent tasks; one worker keeps the queue's order.
        await queue.consume(work.put)
        self.ready.set()
        _log.info(
            "consuming",
            extra={"queue": queue.name, "event_types": sorted(contract.consumed_by(self._service))},
        )

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            envelope = EventEnvelope.FromString(message.body)
        except DecodeError:
            _log.error("undecodable message dead-lettered", extra={"message_id": message.message_id})
            await message.reject(requeue=False)
            return
        refusal = _refusal(message, envelope)
        if refusal is not None:
            self._tracer.refused(envelope, self._destination, refusal)
            await self._refuse(message, envelope, refusal)
            return
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                await loop.run_in_executor(None, self._apply, envelope)
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

    def _apply(self, envelope: EventEnvelope) -> Outcome:
        """One attempt, in a worker thread, under its own span (current while the handler runs)."""
        with self._tracer.processing(envelope, self._destination) as span:
            outcome = self._consumer.apply(envelope)
            self._tracer.processed(span, outcome.value)
        return outcome

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
                # Expected while the connection is down; the redelivery finds the event in the inbox.
                _log.warning("event not acknowledged; the broker will redeliver it", exc_info=True)

    def start(self) -> None:
        self._loop = LoopThread(f"bus-broker-{self._service}")

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
            # A returned message raises, so one is never acknowledged here unless it landed.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await topology.declare(channel, prefix)  # the service's queue exists to move them to
            dead = await channel.declare_queue(
                dead_queue_name(service, prefix), durable=True, arguments=topology.dead_queue_arguments()
            )
            present = int(dead.declaration_result.message_count or 0)
            moved = 0
            for _ in range(min(present, limit)):
                message = await dead.get(fail=False, no_ack=False, timeout=10)
                if message is None:
                    break
                refused = _header(message, REASON_HEADER) in _REFUSALS
                try:
                    await _move(channel, message, dead.name if refused else queue_name(service, prefix))
                except BaseException:
                    await message.nack(requeue=True)  # stays dead, for the next redrive
                    raise
                await message.ack()
                moved += 0 if refused else 1
            return moved

    return asyncio.run(move())


async def _move(channel: AbstractChannel, message: AbstractIncomingMessage, queue: str) -> None:
    """Publish a copy of `message` to `queue` through the default exchange; raises if the
    broker returns it (no such queue) or does not confirm it."""
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
        routing_key=queue,
        mandatory=True,
    )
