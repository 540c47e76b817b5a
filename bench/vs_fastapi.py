"""The kit against FastAPI on a real database-backed read (issue 20): ``OrdersService/GetOrder``
of a 3-line order, by its owner, four ways, in one run.

What is measured
----------------
One whole system as users run it (``bench/telemetry.py``'s ``make_system``: the five
services and the edge, each ``python -m ...`` in a temporary POLY_HOME with real mTLS
certificates and SQLite databases), with the telemetry defaults left alone: metrics served,
every call traced (``parentbased_always_on``) and batch-exported to the span files. A user
registers, logs in and places one order of three lines through the edge; the saga is let
finish. Then the same order is read, with the same bearer token:

    direct gRPC     ``h2load`` POST ``/poly.orders.v1.OrdersService/GetOrder`` over mTLS
                    HTTP/2 to ``python -m services.orders`` (``bench/edge.py``'s h2load with its
                    client-certificate shim); 4 connections at 32 in flight
    edge            ``wrk`` ``GET /v1/orders/<id>`` on ``python -m gateway`` (HTTP/1.1
                    keep-alive, ``bench/telemetry.py``'s Wrk), which calls orders over mTLS
    FastAPI sync    ``wrk`` on ``bench/fastapi_orders.py``'s ``def`` endpoint under uvicorn
                    (one worker, uvloop, httptools, no access log): SQLAlchemy on the orders
                    service's own SQLite file, PyJWT against the auth service's public keys
                    (fetched once at start), the owner checked, the same JSON fields
    FastAPI async   the same app with an ``async def`` endpoint running the sync query inline

Before anything is measured the four answers are compared (the gRPC reply as proto3 JSON,
the three JSON bodies): the same order, the same fields and values. All servers run on one
CPU (the kit's processes pinned thread by thread after start, uvicorn under ``taskset``);
every load generator runs on the other. While one path is measured the servers it does not
use are frozen (SIGSTOP): the uvicorns during the kit's windows, the kit and the other
uvicorn during a FastAPI window. Each window follows a 1 s warm-up; ``--rounds`` rounds, each
with every path at 32 and at 1 in flight, the order of the paths rotated per round.

* calls per CPU-second  calls / (utime+stime from ``/proc/<pid>/stat`` over the window) of the
                        processes serving the path: orders (direct); orders + gateway (edge);
                        the uvicorn process (FastAPI). Auth's CPU is shown beside orders' but
                        not counted: tokens are verified against cached keys, so it should be ~0
* vs FastAPI sync       a path's calls per CPU-second / FastAPI sync's in the same round, then
                        the median over rounds (the issue's targets: direct >= 1.2x at 32 in
                        flight and >= 1.0x at 1, edge >= 0.6x)
* rps, p50, p99         as the load generator reports them (medians over rounds)
* other load            CPU time anything else took on the server core in the window

**Mixed run** (a grpc.aio client pinned to the load CPU, which sees every call's status):
GetOrder at 32 in flight over 4 channels, first alone, then while CreateOrder (a new
``request_id`` each, three lines, so each starts a saga) runs at 4 in flight over its own
channel for the same window; ``--rounds`` windows each, the unloaded ones first. Reported:
reads that did not end OK (by status code; target 0), read p50/p99 and the loaded p99 /
the unloaded p99 (target <= 2x), writes and their failures. Twice: with all five services and
the edge on the server core (the saga each write starts, in payments and notifications too,
takes CPU from the reads), then with orders alone there and the rest of the system moved to
the load CPU, as a deployment runs orders' replicas apart from the other services.

``--profile`` adds a 10 s py-spy window (``--gil``: where the GIL is held) on orders during
the direct path at 32 in flight: per part (the kit, orders, grpc, SQLAlchemy, protobuf, ...)
the share of samples with a frame of it on the stack (inclusive) and with its frame innermost
(the standard library skipped); the functions of the kit, grpc, SQLAlchemy and protobuf most
often on the stack; and the innermost functions. Work outside the GIL (grpc's C core, TLS,
SQLite's C code) is not in the samples: the GIL's share of time beside orders' CPU use says
how much that is.

How to read it
--------------
The machine is shared (other people's tests run on it): compare the ratios of one run, not
absolute numbers across runs; ``other load`` says when a window was disturbed. All processes
run at the kit's ``POLY_LOG_LEVEL=WARNING`` as in the other benches, and uvicorn without its
access log, so neither side writes a line per call.

Recorded run (2026-12-05, this project's 2-core VM, the server core quiet in every window)
------------------------------------------------------------------------------------------
    path            in flight  calls/CPU-s  vs FastAPI sync (rounds)     rps   p50 / p99 ms
    direct gRPC        32         858       1.09 (1.12, 0.97, 1.09)      837   37.2 / 70.2
    edge               32         529       0.68 (0.69, 0.61, 0.68)      517   60.6 / 98.2
    FastAPI sync       32         790       1                            790   38.4 / 85.7
    FastAPI async      32       1,213       1.53 (1.56, 1.47, 1.53)    1,213   26.1 / 201.0
    direct gRPC         1         786       0.98 (1.02, 0.95, 0.98)      761   1.23 / 3.08
    edge                1         444       0.57 (0.58, 0.52, 0.57)      432   2.17 / 6.10
    FastAPI sync        1         818       1                            807   1.21 / 1.65
    FastAPI async       1       1,188       1.45 (1.54, 1.45, 1.45)    1,175   0.83 / 1.05
    Targets: direct >= 1.2x at 32 (not met), >= 1.0x at 1 (not met, within a round's
    spread), edge >= 0.6x (met at 32, not at 1). A run an hour earlier with another bench on
    the core in two rounds: direct 1.00 / 0.93, edge 0.59 / 0.59.
    Mixed run: reads alone 808/s, p99 70.6 ms; with CreateOrder x4 (20/s, none failed) 349
    reads/s, p99 383.3 ms (5.4x: not met), 0 failed reads (met). The reads alone fill the
    core (orders 94%); the writes' sagas take a third of it (notifications 21%, payments
    11%, users 3%).
    py-spy on orders (direct, 32 in flight): the GIL held 41% of the time at 95% CPU; of
    the GIL samples by innermost frame SQLAlchemy 26%, grpc 25%, PyJWT + cryptography 20%,
    standard library 15%, the kit 7% (54% inclusive), orders 3%, OpenTelemetry 2%, protobuf 1%.

Usage: ``python bench/vs_fastapi.py [--rounds R] [--seconds N] [--quick] [--json PATH]
[--profile [--py-spy PATH]]`` (or ``python -m bench.vs_fastapi``); needs ``pip install -e
'.[bench]'`` (fastapi, uvicorn), ``h2load``, ``wrk``, ``cc`` and ``taskset``. Prints markdown
tables; the JSON goes to ``bench/results/vs_fastapi.json`` unless ``--json`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "gen", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import edge  # noqa: E402
import grpc  # noqa: E402
import telemetry  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from machine import (  # noqa: E402
    BenchError,
    all_threads_pinned,
    core_busy_s,
    free_port,
    median,
    percentile,
    pin_all_threads,
    proc_cpu_s,
    run_to_the_end,
    seconds_until_idle,
)

from poly.orders.v1 import orders_service_pb2 as orders_pb  # noqa: E402
from poly.orders.v1 import resources_pb2  # noqa: E402
from poly.type.v1 import money_pb2  # noqa: E402
from services.kit import config, tls  # noqa: E402

CONCURRENCY = 32
LINES = 3
WRITERS = 4
CHANNELS = 4
SERVICE = "poly.orders.v1.OrdersService"
GET_ORDER = f"/{SERVICE}/GetOrder"
CREATE_ORDER = f"/{SERVICE}/CreateOrder"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "vs_fastapi.json"
BASELINE = "fastapi-sync"
TARGETS = {("direct", CONCURRENCY): 1.2, ("direct", 1): 1.0, ("edge", CONCURRENCY): 0.6, ("edge", 1): 0.6}
"""The issue's targets: calls per CPU-second against FastAPI sync (reported, not asserted)."""
MIXED_TARGET_P99 = 2.0
UVICORN_READY_S = 60.0
KIT = ("auth", "users", "orders", "payments", "notifications", "gateway")
PROFILE_PARTS = {
    "services/kit": "/services/kit/",
    "services/orders": "/services/orders/",
    "grpc": "/grpc/",
    "sqlalchemy": "/sqlalchemy/",
    "protobuf": "/google/protobuf/",
    "opentelemetry": "/opentelemetry/",
    "prometheus_client": "/prometheus_client/",
    "jwt + cryptography": ("/jwt/", "/cryptography/"),
    "gen (generated code)": "/gen/poly/",
}


# --- the servers ------------------------------------------------------------------------------


@dataclass
class Uvicorn:
    """One uvicorn process serving one of `bench/fastapi_orders.py`'s apps."""

    name: str
    factory: str
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, system: telemetry.System, server_cpu: int) -> None:
        orders = system.settings("orders")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("POLY_", "OTEL_"))}
        env.update(
            {
                "VS_FASTAPI_DATABASE": orders.db.url.removeprefix("sqlite:///"),
                "VS_FASTAPI_JWKS_URL": f"{system.base}/.well-known/jwks.json",
                "VS_FASTAPI_ISSUER": orders.auth.issuer,
                "VS_FASTAPI_AUDIENCE": orders.auth.audience,
                "PYTHONUNBUFFERED": "1",
            }
        )
        argv = ["taskset", "-c", str(server_cpu), sys.executable, "-m", "uvicorn"]
        argv += [f"bench.fastapi_orders:{self.factory}", "--factory", "--app-dir", str(ROOT)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop", "--http", "httptools"]
        argv += ["--no-access-log", "--log-level", "warning"]
        self.popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def url(self, order: str) -> str:
        return f"http://127.0.0.1:{self.port}/v1/{order}"

    def wait_ready(self, order: str, token: str) -> None:
        deadline = time.monotonic() + UVICORN_READY_S
        answer: Any = "no answer"
        while self.popen is not None and self.popen.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                answer = telemetry._http("GET", self.url(order), token=token, timeout=2)
                if answer[0] == 200:
                    return
            time.sleep(0.2)
        raise BenchError(
            f"{self.name} did not answer 200 (last: {answer}); its output:\n"
            + self.log.read_text(errors="replace")[-3000:]
        )

    def stop(self) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGCONT)
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(5)


@dataclass
class Servers:
    """Every server process of the run, by name, on `cpu`."""

    system: telemetry.System
    uvicorns: list[Uvicorn]
    cpu: int

    def pids(self) -> dict[str, int]:
        found = self.system.pids()
        found.update({u.name: u.popen.pid for u in self.uvicorns if u.popen is not None})
        return found

    def awake(self, names: Sequence[str]) -> None:
        """SIGCONT the processes in `names`, SIGSTOP the others (a stopped one takes no CPU)."""
        for name, pid in self.pids().items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT if name in names else signal.SIGSTOP)

    def pinned(self) -> bool:
        return all(all_threads_pinned(pid, self.cpu) for pid in self.pids().values())


# --- the paths ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    key: str
    title: str
    counted: tuple[str, ...]
    """The processes whose CPU the path's calls per CPU-second divide by."""
    shown: tuple[str, ...]
    awake: tuple[str, ...]
    run: Callable[[int, float], Any]
    """(in flight, seconds) -> a run with requests, duration_s, p50_us, p99_us."""


def grpc_channel(system: telemetry.System) -> grpc.Channel:
    cli = system.settings("cli")
    return grpc.secure_channel(f"localhost:{system.ports['orders']}", tls.channel_credentials(cli.tls))


def get_order_grpc(system: telemetry.System) -> resources_pb2.Order:
    with grpc_channel(system) as channel:
        call = channel.unary_unary(
            GET_ORDER,
            request_serializer=orders_pb.GetOrderRequest.SerializeToString,
            response_deserializer=resources_pb2.Order.FromString,
        )
        reply: resources_pb2.Order = call(
            orders_pb.GetOrderRequest(name=system.order),
            timeout=10,
            metadata=(("authorization", f"Bearer {system.token}"),),
        )
    return reply


def _comparable(value: Any) -> Any:
    """A JSON value with empty strings left out (proto3 JSON may or may not print defaults)
    and timestamps as instants (``.5Z`` and ``.500000Z`` are one time)."""
    if isinstance(value, dict):
        return {
            k: datetime.fromisoformat(v) if k.endswith("Time") else _comparable(v)
            for k, v in value.items()
            if v != ""
        }
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def check_answers(system: telemetry.System, uvicorns: Sequence[Uvicorn]) -> dict[str, Any]:
    """The four paths answer the same order, field for field; returns the gRPC reply and the bodies."""
    reply = get_order_grpc(system)
    bodies = {"direct": json_format.MessageToDict(reply)}
    for name, url in [("edge", system.url)] + [(u.name, u.url(system.order)) for u in uvicorns]:
        status, body = telemetry._http("GET", url, token=system.token)
        if status != 200:
            raise BenchError(f"{name} answered {status}: {body}")
        bodies[name] = body
    expected = _comparable(bodies["direct"])
    if len(reply.lines) != LINES:
        raise BenchError(f"the order has {len(reply.lines)} lines, not {LINES}")
    for name, body in bodies.items():
        if _comparable(body) != expected:
            raise BenchError(
                f"{name} answers another order than direct gRPC:\n{json.dumps(body, indent=1)}\n"
                f"vs\n{json.dumps(bodies['direct'], indent=1)}"
            )
    return {"reply": reply, "bodies": bodies}


def routes(
    system: telemetry.System, uvicorns: Sequence[Uvicorn], tmp: Path, load_cpu: int, reply_bytes: int
) -> list[Route]:
    h2load = edge.H2load(
        f"https://127.0.0.1:{system.ports['orders']}{GET_ORDER}",
        tmp,
        load_cpu,
        system.settings("cli"),
        reply_bytes,
        request=orders_pb.GetOrderRequest(name=system.order).SerializeToString(),
        headers=[f"authorization: Bearer {system.token}"],
    )
    wrk = telemetry.Wrk(tmp, load_cpu)

    def over_http(url: str) -> Callable[[int, float], Any]:
        return lambda in_flight, seconds: wrk.run(system, in_flight, seconds, url)

    found = [
        Route("direct", "direct gRPC (kit)", ("orders",), ("orders", "auth"), KIT, h2load.run),
        Route("edge", "edge (gateway → kit)", ("orders", "gateway"), ("orders", "gateway", "auth"), KIT,
              over_http(system.url)),
    ]  # fmt: skip
    titles = {"fastapi-sync": "FastAPI sync `def`", "fastapi-async": "FastAPI `async def`"}
    for u in uvicorns:
        found.append(
            Route(u.name, titles[u.name], (u.name,), (u.name,), (u.name,), over_http(u.url(system.order)))
        )
    return found


# --- windows ------------------------------------------------------------------------------------


@dataclass
class Window:
    path: str
    in_flight: int
    round: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    calls_per_cpu_s: float
    cpu_us: float
    split_us: dict[str, float]
    server_util: float
    other_load: float
    pinned: bool


class CpuMeter:
    """CPU time of every server process, and of the server core, between enter and exit."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self.spent: dict[str, float] = {}
        self.core_s = self.wall_s = 0.0

    def __enter__(self) -> CpuMeter:
        self._pids = self.servers.pids()
        self._before = {name: proc_cpu_s(pid) for name, pid in self._pids.items()}
        self._core, self._wall = core_busy_s(self.servers.cpu), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self._wall
        self.core_s = core_busy_s(self.servers.cpu) - self._core
        self.spent = {name: proc_cpu_s(pid) - self._before[name] for name, pid in self._pids.items()}


def measure(route: Route, servers: Servers, in_flight: int, opts: Options, round_index: int) -> Window:
    servers.awake(route.awake)
    route.run(in_flight, opts.warmup)
    with CpuMeter(servers) as meter:
        run = route.run(in_flight, opts.seconds)
    counted = sum(meter.spent[name] for name in route.counted)
    per_call = 1e6 / max(run.requests, 1)
    return Window(
        path=route.key,
        in_flight=in_flight,
        round=round_index,
        requests=run.requests,
        rps=run.requests / run.duration_s,
        p50_ms=run.p50_us / 1000,
        p99_ms=run.p99_us / 1000,
        calls_per_cpu_s=run.requests / counted if counted else float("nan"),
        cpu_us=counted * per_call,
        split_us={name: meter.spent[name] * per_call for name in route.shown},
        server_util=counted / meter.wall_s,
        other_load=max(0.0, (meter.core_s - sum(meter.spent.values())) / meter.wall_s),
        pinned=servers.pinned(),
    )


MEDIANS = ("calls_per_cpu_s", "rps", "p50_ms", "p99_ms", "cpu_us", "server_util", "other_load")
"""The `Window` fields a row gives the median of (over rounds)."""


def summarise(windows: Sequence[Window], paths: Sequence[Route]) -> list[dict[str, Any]]:
    rows = []
    for in_flight in sorted({w.in_flight for w in windows}, reverse=True):
        base = {w.round: w for w in windows if w.path == BASELINE and w.in_flight == in_flight}
        for route in paths:
            found = [w for w in windows if w.path == route.key and w.in_flight == in_flight]
            ratios = [w.calls_per_cpu_s / base[w.round].calls_per_cpu_s for w in found if w.round in base]
            rows.append(
                {
                    "path": route.key,
                    "title": route.title,
                    "in_flight": in_flight,
                    "ratio": median(ratios),
                    "ratios": ratios,
                    "target": TARGETS.get((route.key, in_flight)),
                    **{f: median([getattr(w, f) for w in found]) for f in MEDIANS},
                    "split_us": {n: median([w.split_us[n] for w in found]) for n in route.shown},
                    "counted": route.counted,
                    "rounds": len(found),
                    "pinned": all(w.pinned for w in found),
                }
            )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| path | in flight | calls per CPU-s | vs FastAPI sync (per round) | target | rps | p50 ms | p99 ms "
        "| CPU µs/call (split) | server util | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = ""
        if r["target"]:
            verdict = "met" if r["ratio"] >= r["target"] else "missed"
            target = f"≥ {r['target']:.1f}x: {verdict}"
        split = " + ".join(f"{n} {v:.0f}" for n, v in r["split_us"].items() if n in r["counted"])
        idle = "; ".join(
            f"{n} {v:.0f} not counted" for n, v in r["split_us"].items() if n not in r["counted"]
        )
        split = f" ({split}{'; ' if idle else ''}{idle})" if len(r["split_us"]) > 1 else ""
        per_round = ", ".join(f"{x:.2f}" for x in r["ratios"])
        lines.append(
            f"| {r['title']} | {r['in_flight']} | {r['calls_per_cpu_s']:,.0f} | **{r['ratio']:.2f}x** "
            f"({per_round}) | {target} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['cpu_us']:.0f}{split} | {r['server_util']:.0%} | {r['other_load']:.0%} |"
        )
    return "\n".join(lines)


# --- the mixed run: reads while orders are placed ------------------------------------------------


def new_order_request() -> orders_pb.CreateOrderRequest:
    price = money_pb2.Money(currency_code="EUR", amount_minor=1250)
    lines = [
        resources_pb2.OrderLine(sku=f"BOOK-{n}", quantity=2, unit_price=price) for n in range(1, LINES + 1)
    ]
    return orders_pb.CreateOrderRequest(order=resources_pb2.Order(lines=lines), request_id=str(uuid.uuid4()))


class Tally:
    """Status codes and latencies of one kind of call, counted only inside the window."""

    def __init__(self) -> None:
        self.codes: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []
        self.recording = False

    def record(self, began: float, code: grpc.StatusCode) -> None:
        if self.recording:
            self.codes[code.name] += 1
            self.latencies.append((time.perf_counter() - began) * 1e6)

    def report(self, seconds: float) -> dict[str, Any]:
        self.latencies.sort()
        calls = len(self.latencies)
        return {
            "calls": calls,
            "per_s": calls / seconds,
            "codes": dict(self.codes),
            "failed": calls - self.codes.get("OK", 0),
            "p50_ms": percentile(self.latencies, 0.5) / 1000,
            "p99_ms": percentile(self.latencies, 0.99) / 1000,
        }


async def _mixed_load(spec: dict[str, Any]) -> dict[str, Any]:
    cli = config.load("cli", spec["environ"])
    credentials = tls.channel_credentials(cli.tls)
    metadata = (("authorization", f"Bearer {spec['token']}"),)
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.secure_channel(spec["address"], credentials, options=options) for _ in range(CHANNELS + 1)
    ]
    reads, writes = Tally(), Tally()
    read_request = orders_pb.GetOrderRequest(name=spec["order"])
    stop_at = time.perf_counter() + spec["warmup"] + spec["seconds"]

    async def caller(tally: Tally, channel: grpc.aio.Channel, path: str, make: Callable[[], Any]) -> None:
        call = channel.unary_unary(
            path, request_serializer=lambda m: m.SerializeToString(), response_deserializer=bytes
        )
        while time.perf_counter() < stop_at:
            began, code = time.perf_counter(), grpc.StatusCode.OK
            try:
                await call(make(), timeout=10, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                code = error.code()
            tally.record(began, code)

    async def window() -> None:
        await asyncio.sleep(spec["warmup"])
        reads.recording = writes.recording = True

    tasks = [
        caller(reads, channels[i % CHANNELS], GET_ORDER, lambda: read_request) for i in range(spec["reads"])
    ]
    tasks += [caller(writes, channels[-1], CREATE_ORDER, new_order_request) for _ in range(spec["writes"])]
    await asyncio.gather(window(), *tasks)
    for channel in channels:
        await channel.close()
    return {"reads": reads.report(spec["seconds"]), "writes": writes.report(spec["seconds"])}


def mixed_window(system: telemetry.System, load_cpu: int, writes: int, opts: Options) -> dict[str, Any]:
    spec = {
        "address": f"localhost:{system.ports['orders']}",
        "environ": system.environ,
        "token": system.token,
        "order": system.order,
        "reads": CONCURRENCY,
        "writes": writes,
        "seconds": opts.seconds,
        "warmup": opts.warmup,
    }
    out = edge.run_tool(
        ["taskset", "-c", str(load_cpu), sys.executable, __file__, "_mixed", json.dumps(spec)],
        dict(os.environ),
        opts.seconds + opts.warmup,
    )
    found: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return found


def _pooled(windows: Sequence[dict[str, Any]], kind: str) -> dict[str, Any]:
    """One kind of call ("reads" or "writes") over several windows: medians, summed failures."""
    codes: collections.Counter[str] = collections.Counter()
    for w in windows:
        codes.update(w[kind]["codes"])
    return {
        "per_s": median([w[kind]["per_s"] for w in windows]),
        "failed": sum(w[kind]["failed"] for w in windows),
        "codes": dict(codes),
        "p50_ms": median([w[kind]["p50_ms"] for w in windows]),
        "p99_ms": median([w[kind]["p99_ms"] for w in windows]),
    }


def mixed_run(
    servers: Servers, load_cpu: int, opts: Options, *, orders_alone: bool = False
) -> dict[str, Any]:
    """The mixed run's windows and medians. `orders_alone`: the rest of the system (auth,
    users, payments, notifications, the edge) moves to the load CPU for it, so the server core
    holds only what a deployment's orders replica would run; else all of it shares the core."""
    servers.awake(KIT)
    others = [pid for name, pid in servers.system.pids().items() if name != "orders"]
    if orders_alone:
        for pid in others:
            pin_all_threads(pid, load_cpu)
    try:
        return _mixed_windows(servers, load_cpu, opts)
    finally:
        for pid in others:
            pin_all_threads(pid, servers.cpu)


def _mixed_windows(servers: Servers, load_cpu: int, opts: Options) -> dict[str, Any]:
    windows: dict[str, list[dict[str, Any]]] = {"unloaded": [], "mixed": []}
    for kind, writes in (("unloaded", 0), ("mixed", WRITERS)):  # the writes' sagas would linger
        for index in range(opts.rounds):
            with CpuMeter(servers) as meter:
                found = mixed_window(servers.system, load_cpu, writes, opts)
            found["core"] = {name: spent / meter.wall_s for name, spent in meter.spent.items() if name in KIT}
            found["core"]["other load"] = max(0.0, meter.core_s - sum(meter.spent.values())) / meter.wall_s
            windows[kind].append(found)
            reads = found["reads"]
            print(
                f"  mixed run, {kind} {index + 1}: {reads['per_s']:,.0f} reads/s, {reads['failed']} failed, "
                f"p99 {reads['p99_ms']:.1f} ms; {found['writes']['per_s']:,.0f} writes/s, "
                f"{found['writes']['failed']} failed",
                flush=True,
            )
    drained_s = sagas_drained_s(servers)
    print(f"  the sagas the writes started ran on {drained_s:.1f} s after the last window", flush=True)
    rows = {
        kind: {
            "reads": _pooled(w, "reads"),
            "writes": _pooled(w, "writes"),
            "core": {name: median([x["core"][name] for x in w]) for name in w[0]["core"]},
        }
        for kind, w in windows.items()
    }
    p99_ratio = rows["mixed"]["reads"]["p99_ms"] / rows["unloaded"]["reads"]["p99_ms"]
    return {"windows": windows, "rows": rows, "read_p99_ratio": p99_ratio, "drained_s": drained_s}


def sagas_drained_s(servers: Servers) -> float:
    """Seconds until the system is idle again. The writers stop with the last window, but the
    sagas of the orders they placed run on in payments and notifications (the longer, the
    more those gave way to the reads), and the next layout's unloaded windows must not share
    the CPU with them."""
    return seconds_until_idle(
        lambda: [pid for name, pid in servers.pids().items() if name in KIT], interval_s=0.5
    )


def mixed_table(mixed: dict[str, Any]) -> str:
    lines = [
        "| GetOrder x32 (direct gRPC) | reads/s | failed reads (codes) | read p50 ms | read p99 ms "
        "| CreateOrder/s | failed writes (codes) | write p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def failed(found: dict[str, Any]) -> str:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(found["codes"].items()) if c != "OK")
        return f"{found['failed']}{f' ({codes})' if codes else ''}"

    for kind, row in mixed["rows"].items():
        reads, writes = row["reads"], row["writes"]
        if kind == "unloaded":
            lines.append(
                f"| alone | {reads['per_s']:,.0f} | {failed(reads)} | {reads['p50_ms']:.1f} "
                f"| {reads['p99_ms']:.1f} | - | - | - |"
            )
        else:
            lines.append(
                f"| with CreateOrder x{WRITERS} | {reads['per_s']:,.0f} | {failed(reads)} "
                f"| {reads['p50_ms']:.1f} | {reads['p99_ms']:.1f} | {writes['per_s']:,.0f} "
                f"| {failed(writes)} | {writes['p99_ms']:.1f} |"
            )
    ratio = mixed["read_p99_ratio"]
    failures = mixed["rows"]["mixed"]["reads"]["failed"]
    lines.append("")
    for kind, row in mixed["rows"].items():
        shares = sorted(row["core"].items(), key=lambda item: -item[1])
        lines.append(
            f"CPU by process as a share of one core, reads {'alone' if kind == 'unloaded' else 'with writes'}"
            " (warm-up included): "
            + ", ".join(f"{name} {share:.0%}" for name, share in shares if share >= 0.005)
            + "."
        )
    lines.append("")
    lines.append(
        f"The sagas of the orders placed ran on {mixed['drained_s']:.1f} s after the last window with"
        " writes (until the system was idle again)."
    )
    lines.append(
        f"Failed reads under writes: **{failures}** (target 0: {'met' if failures == 0 else 'missed'}); "
        f"read p99 with writes / alone: **{ratio:.2f}x** (target ≤ {MIXED_TARGET_P99:.0f}x: "
        f"{'met' if ratio <= MIXED_TARGET_P99 else 'missed'})."
    )
    return "\n".join(lines)


# --- where orders' time goes (py-spy) -------------------------------------------------------------


def _part(path: str) -> str:
    for part, markers in PROFILE_PARTS.items():
        if any(m in path for m in ((markers,) if isinstance(markers, str) else markers)):
            return part
    return "standard library" if telemetry._is_stdlib(path) else "other"


FUNCTIONS_SHOWN = ("services/kit", "grpc", "sqlalchemy", "protobuf")
"""The parts whose functions the profile table lists one by one."""


def _function(name: str, path: str) -> str:
    return f"{name} ({path.rsplit('site-packages/', 1)[-1].rsplit('/main/', 1)[-1]})"


def summarise_spy(raw: Path) -> dict[str, Any]:
    """Shares of GIL samples: per part, inclusive (on the stack) and innermost (the part of the
    innermost frame outside the standard library); the functions of `FUNCTIONS_SHOWN` most
    often on the stack; and the innermost functions (where the GIL was held)."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    innermost: collections.Counter[str] = collections.Counter()
    functions: dict[str, collections.Counter[str]] = {p: collections.Counter() for p in FUNCTIONS_SHOWN}
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines() if raw.exists() else []:
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [telemetry._frame(f) for f in stack.split(";")[1:]]  # the first entry is the thread
        total += count
        inclusive.update(dict.fromkeys({_part(path) for _, path in frames}, count))
        leaf = next(((fn, path) for fn, path in reversed(frames) if not telemetry._is_stdlib(path)), None)
        innermost[_part(leaf[1]) if leaf else "standard library"] += count
        leaves[_function(*leaf) if leaf else "(standard library only)"] += count
        for part, counter in functions.items():
            counter.update(
                dict.fromkeys({_function(fn, path) for fn, path in frames if _part(path) == part}, count)
            )
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "inclusive": {name: n / total for name, n in inclusive.most_common()},
        "innermost": {name: n / total for name, n in innermost.most_common()},
        "functions": {p: [(f, n / total) for f, n in c.most_common(8)] for p, c in functions.items()},
        "innermost_functions": [(f, n / total) for f, n in leaves.most_common(15)],
    }


def profile(route: Route, servers: Servers, opts: Options, tmp: Path, load_cpu: int) -> dict[str, Any]:
    seconds = 10
    servers.awake(route.awake)
    route.run(CONCURRENCY, opts.warmup)
    out = tmp / "orders-spy.txt"
    argv = [
        "taskset",
        "-c",
        str(load_cpu),
        opts.py_spy,
        "record",
        "--gil",
        "--nonblocking",
        "--full-filenames",
    ]
    argv += [
        "-r",
        "200",
        "-d",
        str(seconds),
        "-f",
        "raw",
        "-o",
        str(out),
        "-p",
        str(servers.pids()["orders"]),
    ]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with CpuMeter(servers) as meter:
            run = route.run(CONCURRENCY, seconds + 1)
        _, err = spy.communicate(timeout=60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(10)
    found = summarise_spy(out)
    if out.exists():  # the raw stacks, beside the JSON, for a closer look
        kept = opts.json_path.with_name(f"{opts.json_path.stem}-orders-spy.txt")
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, kept)
        found["raw"] = str(kept)
    found["orders_cpu_us"] = 1e6 * meter.spent["orders"] / max(run.requests, 1)
    found["orders_util"] = meter.spent["orders"] / meter.wall_s
    found["expected_samples"] = 200 * seconds
    if spy.returncode != 0:
        found["error"] = err.decode(errors="replace")[-500:]
    return found


def profile_table(found: dict[str, Any]) -> str:
    if not found.get("samples"):
        return f"py-spy recorded nothing: {found.get('error', '')}"
    lines = [
        f"orders at {CONCURRENCY} in flight, direct gRPC: {found['samples']} GIL samples of "
        f"{found['expected_samples']} (the GIL held {found['samples'] / found['expected_samples']:.0%} of "
        f"the time; orders used {found['orders_util']:.0%} of a CPU, "
        f"{found['orders_cpu_us']:.0f} µs per call)",
        "",
        "| part | inclusive (on the stack) | innermost frame |",
        "|---|---:|---:|",
    ]
    for part, share in found["inclusive"].items():
        lines.append(f"| {part} | {share:.1%} | {found['innermost'].get(part, 0.0):.1%} |")
    for part, listed in found["functions"].items():
        lines += ["", f"| {part}: functions most often on the stack | inclusive |", "|---|---:|"]
        lines += [f"| `{name}` | {share:.1%} |" for name, share in listed]
    lines += [
        "",
        "| innermost function outside the standard library (GIL held there) | share |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in found["innermost_functions"]]
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    seconds: float
    warmup: float
    rounds: int
    quick: bool
    json_path: Path
    profile: bool = False
    py_spy: str = ""
    mixed_only: bool = False


def make_servers(tmp: Path, server_cpu: int) -> Servers:
    """The system's settings (telemetry as users run it) and two uvicorns; nothing started yet."""
    setup = telemetry.Setup("defaults", metrics=True, traces="file")
    system = telemetry.make_system(setup, tmp / "home", server_cpu, 0, None)
    system.environ.pop("OTEL_TRACES_SAMPLER", None)  # the default sampler, as `poly up` runs
    uvicorns = [
        Uvicorn(name, factory, free_port(), tmp / f"{name}.log")
        for name, factory in (("fastapi-sync", "sync_app"), ("fastapi-async", "async_app"))
    ]
    return Servers(system, uvicorns, server_cpu)


def start(servers: Servers) -> None:
    system, server_cpu, uvicorns = servers.system, servers.cpu, servers.uvicorns
    began = time.monotonic()
    telemetry.start_system(system)
    telemetry.wait_ready(system)
    for pid in system.pids().values():
        pin_all_threads(pid, server_cpu)
    telemetry.prepare_order(system, lines=LINES)
    for u in uvicorns:
        u.start(system, server_cpu)
    for u in uvicorns:
        u.wait_ready(system.order, system.token)
    print(
        f"  the system and two uvicorns ready in {time.monotonic() - began:.0f} s; {system.order}", flush=True
    )


def stop(servers: Servers | None) -> None:
    if servers is None:
        return
    for u in servers.uvicorns:
        u.stop()
    servers.system.stop()


def run(opts: Options) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    missing = [tool for tool in ("taskset", "h2load", "wrk", "cc") if shutil.which(tool) is None]
    if len(cpus) < 2 or missing:
        print(f"need 2 CPUs and {', '.join(missing) or 'nothing else'}", file=sys.stderr)
        return 2
    server_cpu, load_cpu = cpus[0], cpus[1]
    os.sched_setaffinity(0, {load_cpu})
    began = time.monotonic()
    servers: Servers | None = None
    results: dict[str, Any] = {
        "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "grpcio": grpc.__version__},
        "options": {k: str(v) for k, v in asdict(opts).items()},
        "uncommitted": subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.splitlines(),
    }
    print(f"servers on CPU {server_cpu}, load generators on CPU {load_cpu}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vs-fastapi-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            servers = make_servers(tmp, server_cpu)
            start(servers)
            answers = check_answers(servers.system, servers.uvicorns)
            results["order"] = answers["bodies"]["edge"]
            if not opts.mixed_only:
                paths = routes(servers.system, servers.uvicorns, tmp, load_cpu, answers["reply"].ByteSize())
                print("  the four paths answer the same order; measuring", flush=True)
                windows: list[Window] = []
                for round_index in range(opts.rounds):
                    shift = round_index % len(paths)
                    for in_flight in (CONCURRENCY, 1):
                        for route in paths[shift:] + paths[:shift]:
                            window = measure(route, servers, in_flight, opts, round_index)
                            windows.append(window)
                            print(
                                f"  round {round_index + 1} {route.key:>13} x{in_flight:<2}: "
                                f"{window.calls_per_cpu_s:,.0f} calls/CPU-s, {window.rps:,.0f} rps, "
                                f"p99 {window.p99_ms:.1f} ms, other load {window.other_load:.0%}",
                                flush=True,
                            )
                results["windows"] = [asdict(w) for w in windows]
                results["rows"] = summarise(windows, paths)
            results["mixed"] = mixed_run(servers, load_cpu, opts)
            print("  the mixed run again, orders alone on the server core", flush=True)
            results["mixed_orders_alone"] = mixed_run(servers, load_cpu, opts, orders_alone=True)
            if opts.profile:
                results["profile"] = profile(paths[0], servers, opts, tmp, load_cpu)
        finally:
            stop(servers)
    if "rows" in results:
        print(f"\n## GetOrder of a {LINES}-line order by its owner: the kit vs FastAPI (one core)\n")
        print(table(results["rows"]))
    print(f"\n## Reads while orders are placed (direct gRPC, {opts.rounds} windows each, medians)\n")
    print("All five services and the edge on the server core:\n")
    print(mixed_table(results["mixed"]))
    print("\nOrders alone on the server core (the rest of the system on the load CPU, as in a deployment):\n")
    print(mixed_table(results["mixed_orders_alone"]))
    if "profile" in results:
        print("\n## Where orders' time goes (py-spy --gil)\n")
        print(profile_table(results["profile"]))
    results["wall_s"] = time.monotonic() - began
    print(f"\n(wall time {results['wall_s']:.0f} s; JSON in {opts.json_path})")
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "_mixed":
        print(json.dumps(asyncio.run(_mixed_load(json.loads(argv[1])))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0].replace("\n", " "))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every path (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window (default 5)")
    parser.add_argument("--quick", action="store_true", help="one round of 2 s windows: a smoke run")
    parser.add_argument(
        "--json", type=Path, default=RESULTS_PATH, help=f"where the results go ({RESULTS_PATH})"
    )
    parser.add_argument(
        "--profile", action="store_true", help="a py-spy window on orders (direct, 32 in flight)"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "", help="py-spy binary")
    parser.add_argument(
        "--mixed-only", action="store_true", help="only the mixed run (reads while orders are placed)"
    )
    args = parser.parse_args(argv)
    if args.seconds < 1 or not 1 <= args.rounds <= 20:
        parser.error("need --seconds >= 1 and --rounds in 1..20")
    if args.profile and not args.py_spy:
        parser.error("--profile needs py-spy: pip install py-spy, or pass --py-spy PATH")
    if args.profile and args.mixed_only:
        parser.error("--profile profiles a read path: it cannot go with --mixed-only")
    opts = Options(
        seconds=2.0 if args.quick else args.seconds,
        warmup=1.0,
        rounds=1 if args.quick else args.rounds,
        quick=args.quick,
        json_path=args.json,
        profile=args.profile,
        py_spy=args.py_spy,
        mixed_only=args.mixed_only,
    )
    return run_to_the_end(run, opts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
