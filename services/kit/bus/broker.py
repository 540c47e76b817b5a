"""The RabbitMQ transport (aio-pika), for deployments that want a broker between services.

The topology is derived from the contract (`topology`: a topic exchange per event family,
a quorum queue per consuming service with its dead-letter queue, a binding per event type
and consumer) and declared, idempotently, by every service: `BrokerTransport` on each
connection before its first publish, `BrokerConsumer` (`broker_consumer`) before it
consumes, and ``poly bus declare`` from a deploy job. So a consumer's queue exists and
collects its events from the moment any service has run, however late that consumer starts.

`BrokerTransport` is the relay's side: a publish counts only once the broker confirms it.
Each delivery is one consumer's (the outbox routes an event to each of its consumers, as on
the embedded transport) and is published straight to that consumer's queue, so a queue that
is missing is noticed for exactly the consumer it belongs to, even while the event's other
consumers still receive it; a fan-out through the family exchange would drop it silently.
It owns one plain (not robust) connection with one channel, and rebuilds both after a
failure, trying at most once per short back-off while the broker is away: aio-pika's robust
connection would keep every channel opened during an outage and reopen them all on
reconnect, logging errors from the channels' close callbacks meanwhile. An event whose type
has consumers but which the broker returns as unroutable (their queues were deleted) is an
alarm: an error log and the ``unroutable`` metric, the topology declared again, one retry
at once. Both sides run aio-pika in an event loop of their own thread (`LoopThread`), so the
rest of the service stays on the thread-pool model. A message carries its envelope's W3C
trace context (the relay's send span, see `tracing`) in its ``traceparent``/``tracestate``
headers too, for tools that read the broker's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from poly.events.v1.events_pb2 import EventEnvelope
from services.kit import backoff
from services.kit.bus import contract, topology
from services.kit.bus.metrics import BusMetrics
from services.kit.bus.topology import exchange_name
from services.kit.bus.tracing import RABBITMQ, Destination
from services.kit.bus.transport import DeliveryError
from services.kit.config import redact_url

__all__ = ["LEGACY_ROUTE", "BrokerTransport", "LoopThread"]

_log = logging.getLogger("poly.bus.broker")
_T = TypeVar("_T")

LEGACY_ROUTE = "broker"
"""The one route every broker delivery had before routes named consumers: still sent, through
the family exchange (fan-out by binding), so an outbox of the previous version drains."""

_TRACE_HEADERS = frozenset({"traceparent", "tracestate"})

_RECONNECT_BASE = 0.25
_RECONNECT_MAX = 2.0
"""Back-off between the publisher's connection attempts while the broker is away (seconds)."""


class LoopThread:
    """An asyncio loop of its own in a daemon thread, driven from synchronous code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        """Run `coroutine` on the loop; cancelled there when `timeout` passes, never left behind."""
        bounded = asyncio.wait_for(coroutine, timeout)
        return asyncio.run_coroutine_threadsafe(bounded, self.loop).result(timeout + 1)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _close_quietly(connection: AbstractConnection) -> None:
    """Close a connection that may be dead already, in bounded time."""
    with contextlib.suppress(Exception, asyncio.TimeoutError):
        await asyncio.wait_for(connection.close(), 2)


@dataclass
class _Link:
    """The publisher's connection and its one channel, with the topology declared on it."""

    connection: AbstractConnection
    channel: AbstractChannel
    exchanges: Mapping[str, AbstractExchange]


class _Unreachable(Exception):
    """No connection attempt now: the last one failed and its back-off has not passed."""


class _Unroutable(Exception):
    """Still returned after the topology was declared again."""


class BrokerTransport:
    """Publishes each delivery to its consumer's queue with publisher confirms.

    Every failure is transient (`DeliveryError.transient`): the relay retries it until it
    goes through and never dead-letters it. That includes an event the broker still returns
    as unroutable after the topology was declared again: the event is sound, the broker's
    topology is not, so it stays pending (not lost, not counted as delivered, and holding
    later events of its aggregate back so they keep their order) while its error log and the
    ``unroutable`` metric say that someone must look.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "poly",
        timeout: float = 10.0,
        metrics: BusMetrics | None = None,
        name: str | None = None,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self.metrics = metrics or BusMetrics()
        self._name = name or f"{prefix} publisher"
        """The connection's name on the broker (``client_properties.connection_name``)."""
        self._loop = LoopThread("bus-broker-publisher")
        self._link: _Link | None = None
        self._setup: asyncio.Lock | None = None
        self._failures = 0
        self._next_attempt = 0.0
        self._last_error = ""

    async def _current(self) -> _Link:
        """The open link, or a new one (connection, channel, topology) if there is none."""
        if self._setup is None:
            self._setup = asyncio.Lock()  # created on the loop's own thread
        async with self._setup:  # concurrent sends share one connection and one channel
            link = self._link
            if link is not None and not link.channel.is_closed:
                return link
            self._link = None
            if link is not None:
                _log.info("broker connection lost; reconnecting", extra={"url": redact_url(self._url)})
                await _close_quietly(link.connection)
            self._link = await self._connect()
            return self._link

    async def _connect(self) -> _Link:
        loop = asyncio.get_running_loop()
        wait = self._next_attempt - loop.time()
        if wait > 0:
            raise _Unreachable(f"{self._last_error}; next connection attempt in {max(wait, 0.1):.1f}s")
        connection: AbstractConnection | None = None
        try:
            connection = await aio_pika.connect(
                self._url, timeout=self._timeout, client_properties={"connection_name": self._name}
            )
            # A returned (unroutable) message raises: a confirm alone would count it delivered.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            declared = await topology.declare(channel, self._prefix, timeout=self._timeout)
        except BaseException as error:
            self._failures += 1
            self._last_error = f"{type(error).__name__}: {error}"
            self._next_attempt = loop.time() + backoff.backoff_seconds(
                self._failures, base=_RECONNECT_BASE, maximum=_RECONNECT_MAX
            )
            if connection is not None:
                await _close_quietly(connection)
            raise
        if self._failures:
            _log.info("connected to the broker again", extra={"failed_attempts": self._failures})
        self._failures = 0
        return _Link(connection, channel, declared.exchanges)

    async def _drop(self, link: _Link) -> None:
        """Forget `link` after a failure and close its connection: the next send builds a new one."""
        if self._setup is None:
            return
        async with self._setup:
            if self._link is link:
                self._link = None
        await _close_quietly(link.connection)

    async def _publish(self, route: str, envelope: EventEnvelope) -> None:
        link = await self._current()
        try:
            try:
                await self._publish_on(link, route, envelope)
            except aio_pika.exceptions.PublishError:  # returned: the consumer's queue is missing
                await self._unroutable(link, route, envelope)
        except (aio_pika.exceptions.DeliveryError, _Unroutable):
            raise  # the broker answered: the link is sound
        except BaseException:
            await self._drop(link)
            raise

    def destination(self, route: str, envelope: EventEnvelope) -> Destination:
        if route == LEGACY_ROUTE:
            exchange, routing_key = exchange_name(envelope.type, self._prefix), envelope.type
        else:
            exchange, routing_key = "", topology.queue_name(route, self._prefix)
        return Destination(
            RABBITMQ,
            exchange or routing_key,  # the default exchange routes by queue name: name the queue
            {"messaging.rabbitmq.destination.routing_key": routing_key},
        )

    async def _publish_on(self, link: _Link, route: str, envelope: EventEnvelope) -> None:
        headers: dict[str, Any] = {"aggregate_id": envelope.aggregate_id, "source": envelope.source}
        headers.update((key, value) for key, value in envelope.trace_context.items() if key in _TRACE_HEADERS)
        message = aio_pika.Message(
            body=envelope.SerializeToString(),
            message_id=envelope.id,
            type=envelope.type,
            content_type="application/x-protobuf",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers,
        )
        if route == LEGACY_ROUTE:  # a delivery recorded before routes named consumers: fan out
            exchange = link.exchanges[exchange_name(envelope.type, self._prefix)]
            await exchange.publish(message, routing_key=envelope.type, mandatory=True, timeout=self._timeout)
            return
        # The default exchange routes by queue name: this consumer's queue, or returned.
        queue = topology.queue_name(route, self._prefix)
        await link.channel.default_exchange.publish(
            message, routing_key=queue, mandatory=True, timeout=self._timeout
        )

    async def _unroutable(self, link: _Link, route: str, envelope: EventEnvelope) -> None:
        """The broker returned an event a consumer's queue should have taken: raise the
        alarm, declare the topology again and publish once more at once."""
        consumers = sorted(contract.consumers_of(envelope.type)) if route == LEGACY_ROUTE else [route]
        self.metrics.add("unroutable", envelope.type)
        facts = {"event_id": envelope.id, "event_type": envelope.type, "missing_consumers": consumers}
        _log.error(
            "event unroutable: its consumer's queue is missing; declaring the topology again", extra=facts
        )
        declared = await topology.declare(link.channel, self._prefix, timeout=self._timeout)
        link.exchanges = declared.exchanges
        try:
            await self._publish_on(link, route, envelope)
        except aio_pika.exceptions.PublishError:
            _log.error("event still unroutable after declaring the topology again", extra=facts)
            raise _Unroutable(
                f"{envelope.type} is unroutable: no queue of {', '.join(consumers)} takes it, "
                "even after declaring the topology again"
            ) from None
        _log.warning("event routed after declaring the topology again", extra=facts)

    def send(self, route: str, envelope: EventEnvelope) -> None:
        try:
            self._loop.run(self._publish(route, envelope), self._timeout)
        except _Unroutable as error:
            raise DeliveryError(f"{route}: {error}", transient=True) from None
        except aio_pika.exceptions.DeliveryError:  # a nack: the broker did not take it
            raise DeliveryError(
                f"{route}: the broker refused {envelope.type} (nack)", transient=True
            ) from None
        except _Unreachable as error:
            raise DeliveryError(f"{route} {redact_url(self._url)}: {error}", transient=True) from None
        except Exception as error:  # noqa: BLE001 - any other failure: the broker is away or slow
            raise DeliveryError(
                f"{route} {redact_url(self._url)}: {type(error).__name__}: {error}", transient=True
            ) from None

    def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            try:
                self._loop.run(_close_quietly(link.connection), 5)
            except Exception:  # noqa: BLE001 - closing a connection that is already gone
                _log.debug("broker connection already closed")
        self._loop.close()
