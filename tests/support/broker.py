"""RabbitMQ housekeeping for tests: each test uses its own name prefix and deletes it after."""

from __future__ import annotations

import asyncio

import aio_pika

from services.kit import bus


def delete_namespace(
    url: str,
    prefix: str,
    *,
    consumers: tuple[str, ...] = ("payments",),
    families: tuple[str, ...] = ("order",),
) -> None:
    """Delete the queues and exchanges a test created under `prefix`."""

    async def clean() -> None:
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel()
            for service in consumers:
                await channel.queue_delete(bus.queue_name(service, prefix))
                await channel.queue_delete(bus.dead_queue_name(service, prefix))
            for exchange in [f"{prefix}.events.{family}" for family in families] + [f"{prefix}.dead"]:
                await channel.exchange_delete(exchange)

    asyncio.run(clean())
