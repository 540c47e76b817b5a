"""`poly bus declare`: the whole RabbitMQ topology from the contract, for a deploy job."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from services.kit.bus import topology
from tests.support.broker import delete_namespace
from tests.support.env import poly_environ
from tests.support.processes import run_module


def _poly(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_module("services.cli", environ, *args, stdin="")


@pytest.fixture
def prefix(amqp_url: str) -> Iterator[str]:
    name = f"polytest-{uuid.uuid4().hex[:10]}"
    yield name
    delete_namespace(amqp_url, name)


def _queues(url: str, prefix: str) -> dict[str, int]:
    """Each topology queue's ready messages, read passively (a missing queue fails)."""

    async def go() -> dict[str, int]:
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel()
            found = {}
            for spec in topology.topology(prefix).queues:
                queue = await channel.declare_queue(spec.name, passive=True)
                found[spec.name] = int(queue.declaration_result.message_count or 0)
            return found

    return asyncio.run(go())


@pytest.mark.slow
def test_declare_creates_every_queue_and_binding_and_can_run_again(
    tmp_path: Path, amqp_url: str, prefix: str
) -> None:
    environ = poly_environ(tmp_path, POLY_BUS_URL=amqp_url, POLY_BUS_PREFIX=prefix)
    first = _poly(environ, "bus", "declare")
    assert first.returncode == 0, first.stderr
    wanted = topology.topology(prefix)
    lines = first.stdout.splitlines()
    assert f"queue    {prefix}.notifications.dead (x-queue-type=quorum)" in lines
    assert f"binding  {prefix}.events.user -> {prefix}.notifications (poly.events.v1.UserRegistered)" in lines
    assert lines[-1] == (
        f"declared {len(wanted.exchanges) + 1} exchanges, {len(wanted.queues)} queues and "
        f"{len(wanted.bindings)} bindings on amqp://guest:***@{amqp_url.rsplit('@', 1)[-1]}"
    )
    assert "guest:guest" not in first.stdout
    assert set(_queues(amqp_url, prefix)) == {q.name for q in wanted.queues}
    again = _poly(environ, "bus", "declare")
    assert (again.returncode, again.stdout) == (0, first.stdout), "idempotent"


def test_declare_without_a_broker_url_exits_2_naming_the_variable(tmp_path: Path) -> None:
    result = _poly(poly_environ(tmp_path), "bus", "declare")
    assert result.returncode == 2
    assert "POLY_BUS_URL is not set" in result.stderr and "README.md" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_declare_with_no_broker_there_exits_1_saying_what_to_do(tmp_path: Path) -> None:
    environ = poly_environ(tmp_path, POLY_BUS_URL="amqp://poly:hunter2@127.0.0.1:1/")
    result = _poly(environ, "bus", "declare")
    assert result.returncode == 1
    assert "cannot reach the broker at amqp://poly:***@127.0.0.1:1/" in result.stderr
    assert "start RabbitMQ or fix POLY_BUS_URL" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["bus", "declare", "orders"], "`poly bus declare` takes no SERVICE"),
        (["bus", "status"], "`poly bus status` needs a SERVICE"),
    ],
    ids=["declare-with-service", "status-without-service"],
)
def test_a_service_where_none_goes_or_none_where_one_must_exits_2(
    tmp_path: Path, args: list[str], said: str
) -> None:
    result = _poly(poly_environ(tmp_path), *args)
    assert result.returncode == 2
    assert said in result.stderr and "usage: poly" in result.stderr
