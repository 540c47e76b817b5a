"""RabbitMQ housekeeping for tests: each test uses its own name prefix and deletes it after,
and the broker's own view of a connection (how many channels it has), by connection name."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess

import aio_pika
import pytest

from services.kit import bus
from services.kit.bus import topology
from tests.support.tcp_proxy import TcpProxy


def delete_namespace(
    url: str,
    prefix: str,
    *,
    consumers: tuple[str, ...] = (),
    families: tuple[str, ...] = (),
) -> None:
    """Delete the queues and exchanges of the contract's topology under `prefix` (whoever
    declared them), and those of any other `consumers` and event `families` named."""
    declared = topology.topology(prefix)
    queues = [queue.name for queue in declared.queues]
    queues += [
        name
        for service in consumers
        for name in (bus.queue_name(service, prefix), bus.dead_queue_name(service, prefix))
    ]
    exchanges = [*declared.exchanges, declared.dead_exchange]
    exchanges += [f"{prefix}.events.{family}" for family in families]

    async def clean() -> None:
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for queue in dict.fromkeys(queues):
                await channel.queue_delete(queue)
            for exchange in dict.fromkeys(exchanges):
                await channel.exchange_delete(exchange)

    asyncio.run(clean())


def channels_of(connection_name: str) -> list[int]:
    """The channel count of each open connection named `connection_name` (its client-provided
    name), as the broker reports it (``rabbitmqctl list_connections``). Needs rabbitmqctl on
    this machine, talking to the test broker (.ci/run starts it locally); under CI=true a
    missing rabbitmqctl fails the test rather than skipping it."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    if rabbitmqctl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("rabbitmqctl is needed to count a connection's channels on the broker")
        pytest.skip("rabbitmqctl is not installed")
    listed = subprocess.run(
        [rabbitmqctl, "-q", "list_connections", "client_properties", "channels"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    marker = f'{{"connection_name","{connection_name}"}}'
    return [int(line.rsplit("\t", 1)[-1]) for line in listed.stdout.splitlines() if marker in line]


def through_proxy(amqp_url: str) -> tuple[TcpProxy, str]:
    """A TCP proxy (up) in front of the broker of `amqp_url`, and the URL that goes through it:
    cutting the proxy is a broker outage as the client sees one."""
    host_port = amqp_url.rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    proxy = TcpProxy((host, int(port or 5672)))
    proxy.up()
    return proxy, amqp_url.replace(host_port, f"127.0.0.1:{proxy.port}")


def expected_during_an_outage(record: logging.LogRecord) -> bool:
    """aiormq's own error line for each refused connection attempt while the broker is away
    (at most one per reconnect back-off, not one per publish): the one error-level line an
    outage may leave."""
    return record.name == "aiormq.connection" and record.getMessage().startswith(
        "error when creating transport"
    )


def delete_queue(amqp_url: str, name: str) -> None:
    """Delete queue `name`, as an operator's mistake would."""

    async def go() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            await (await connection.channel()).queue_delete(name)

    asyncio.run(go())


def ready_count(amqp_url: str, name: str) -> int:
    """Messages waiting in queue `name`."""

    async def go() -> int:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            queue = await (await connection.channel()).declare_queue(name, passive=True)
            return int(queue.declaration_result.message_count or 0)

    return asyncio.run(go())
