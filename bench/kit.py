"""Choose the gRPC server model for the Python microservice kit, by measurement.

What is measured
----------------
Unary scenarios, one fresh server subprocess each:

    a  thread-pool ``grpc.server``, echo         e  thread-pool + sync SQLAlchemy Core select
    b  ``grpc.aio`` (default asyncio loop), echo  f  grpc.aio + async ORM get (aiosqlite)
    c  ``grpc.aio`` + uvloop, echo                g  grpc.aio + async Core select (aiosqlite)
    d  thread-pool + sync SQLAlchemy ORM ``session.get``

Every call carries a real ``google.protobuf.StringValue`` (de)serialised by the standard
protobuf serialisers; handlers are registered the way protoc-generated code registers them
(generic handler + registered method).  The DB scenarios read one random row (by primary key)
of a 1,000-row SQLite table with one session/connection per request, from a pool.

The server runs pinned to one CPU; the load generator (a grpc.aio + uvloop client keeping
``CONCURRENCY`` calls in flight, closed loop, over several connections) runs in separate
process(es) pinned to the other CPU.  Plaintext HTTP/2 on 127.0.0.1 only.  After a warm-up,
a fixed window is measured:

* rps               calls completed inside the window / window length
* p50 / p99         client-observed latency of calls that started and ended in the window
* server CPU us/req server utime+stime (``/proc/<pid>/stat``) over the window / calls
* server CPU util   the same CPU time / window wall time; ~100% means the server core is
                    saturated, i.e. the load generator was not the bottleneck
* load-gen util     CPU use of the load generator(s) on their core, for the same check
* other load        CPU time other processes took on the server's core during the window

The streaming check opens 1,000 server-streaming calls that each receive one message and
then stay open, measures unary rps on the same server before and while they are held,
reports RSS and thread count, cancels them, and checks that the server drains and that
``stop(grace)`` returns.  Every wait has a timeout; nothing can hang.

How to read it
--------------
The machine is shared and noisy: compare ratios within one run, not absolute numbers across
runs.  When server CPU util is near 100%, the rps ratio and the inverse CPU-per-request ratio
agree.  When it is well below, the table says why: other processes on the server's core
(rps drops, CPU us/req hardly moves), the load generator at its limit, or the server waiting.
The verdict therefore decides on CPU us/req and reports whether the rps ratios agree;
``--rounds`` repeats scenarios a-g and reports medians.  mTLS is not included: its cost is
mainly a per-connection handshake (connections here are long-lived), not a per-call cost.

Recorded run (2026-11-25, this project's 2-core machine, grpcio 1.85, one run)
---------------------------------------------------------------------------
    scenario                                  rps   ratio  CPU us/req
    a thread-pool grpc.server, echo          3167   1.00x     302
    b grpc.aio, echo                         1981   0.63x     490
    c grpc.aio + uvloop, echo                2107   0.67x     452
    d thread-pool + sync ORM get              943   0.30x     999
    e thread-pool + sync Core select         1694   0.54x     569
    f grpc.aio + async ORM get (aiosqlite)    532   0.17x    1860
    g grpc.aio + async Core select            782   0.25x    1263
    1,000 held streams: thread-pool 1000/1000 (1,041 threads, +50 MB, unary 0.81x while held);
    grpc.aio 1000/1000 (unary 0.94x). Both drained; stop(grace) returned at once.

Verdict, and the kit's choice: the thread-pool server with synchronous SQLAlchemy. It
spends 1.6x less CPU per call than grpc.aio (1.5x less than with uvloop) and, with a real
database read, serves 1.8x (ORM) to 2.2x (Core) the async stack. Its one cost, a thread per
open stream, was measured: 1,000 watch streams fit in about 50 MB, so the kit sizes its pool
for them (POLY_GRPC_WORKERS, default 1200) instead of running a second concurrency model.

Usage: ``python bench/kit.py [--seconds N] [--quick] [--rounds R] [--load-procs P]``.
Results are printed as markdown and written to ``bench/results/kit.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import grpc
import sqlalchemy as sa
import uvloop
from google.protobuf import __version__ as protobuf_version
from google.protobuf.wrappers_pb2 import StringValue
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# --- knobs -------------------------------------------------------------------------------

SERVICE = "bench.kit.v1.Kit"
CALL_METHOD = f"/{SERVICE}/Call"
HOLD_METHOD = f"/{SERVICE}/Hold"

CONCURRENCY = 32  # calls in flight from the load generator
LOAD_CHANNELS = 4  # client connections the in-flight calls are spread over
THREADPOOL_WORKERS = 16  # max_workers of the thread-pool server in scenarios a, d, e
POOL_SIZE = 16  # SQLAlchemy pool size (sync and async), max_overflow=0
ROWS = 1_000
STREAMS = 1_000
HOLD_CHANNELS = 8
STREAM_WORKERS = STREAMS + CONCURRENCY + 64  # thread-pool sized for the held streams

HOLD_MAX_S = 300.0  # no held stream outlives this, whatever happens
STOP_GRACE_S = 5.0
STARTUP_TIMEOUT_S = 30.0
OPEN_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 15.0
CALL_TIMEOUT_S = 10.0
CHILD_LIFETIME_S = 900.0  # longest a child waits for its next command
MAX_COMMANDS = 1_000
MAX_READS = 100_000
MAX_CALLS_PER_WORKER = 10_000_000

PROBE = {
    "threadpool_vs_aio_rps": 1.8,
    "uvloop_gain": 0.15,
    "async_orm_vs_nodb": 0.30,
    "async_core_vs_nodb": 0.41,
    "cpu_us_threadpool": 141.0,
    "cpu_us_aio": 285.0,
}

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "kit.json"

ServerModel = Literal["threadpool", "aio", "aio-uvloop"]
DbMode = Literal["none", "orm", "core"]


class BenchError(RuntimeError):
    """A child misbehaved or a bounded wait ran out."""


# --- data model --------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    email: Mapped[str] = mapped_column(sa.String(128))
    balance_cents: Mapped[int]
    created_at: Mapped[datetime]


ACCOUNT_TABLE = Account.__table__
BY_PK = sa.select(ACCOUNT_TABLE).where(ACCOUNT_TABLE.c.id == sa.bindparam("pk"))


def create_database(path: Path) -> None:
    engine = sa.create_engine(f"sqlite+pysqlite:///{path}")
    Base.metadata.create_all(engine)
    rng = random.Random(7)
    epoch = datetime(2024, 1, 1)
    with Session(engine) as session:
        session.add_all(
            Account(
                id=i,
                name=f"user-{i:04d}",
                email=f"user{i}@example.test",
                balance_cents=rng.randint(0, 10**7),
                created_at=epoch + timedelta(minutes=i),
            )
            for i in range(1, ROWS + 1)
        )
        session.commit()
    engine.dispose()


def render(row: Any) -> StringValue:
    """Turn an ORM object or a Core row into the response message."""
    return StringValue(value=f"{row.id}|{row.name}|{row.email}|{row.balance_cents}")


# --- child-process plumbing (shared by the orchestrator and the children) ----------------


def emit(event: str, **data: Any) -> None:
    """Children report to the orchestrator with one JSON object per stdout line."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


class LineReader:
    """Newline-delimited reads from a pipe that never block past a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.eof = False
        self._buf = bytearray()

    def _pop(self) -> str | None:
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[:end]).decode()
        del self._buf[: end + 1]
        return line

    def _fill(self) -> None:
        chunk = os.read(self.fd, 1 << 16)
        self._buf += chunk
        self.eof = not chunk

    def read_line(self, deadline: float) -> str | None:
        """The next line, or None on EOF or when the deadline passes."""
        for _ in range(MAX_READS):
            line = self._pop()
            remaining = deadline - time.monotonic()
            if line is not None or self.eof or remaining <= 0:
                return line
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if readable:
                self._fill()
        return None

    async def read_line_async(self, deadline: float) -> str | None:
        """Like read_line, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        for _ in range(MAX_READS):
            line = self._pop()
            remaining = deadline - time.monotonic()
            if line is not None or self.eof or remaining <= 0:
                return line
            readable: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = readable) -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(self.fd, wake)
            try:
                await asyncio.wait_for(readable, remaining)
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(self.fd)
            self._fill()
        return None


def stdin_reader() -> tuple[LineReader, float]:
    return LineReader(sys.stdin.fileno()), time.monotonic() + CHILD_LIFETIME_S


def register(server: Any, call: Callable[..., Any], hold: Callable[..., Any]) -> None:
    """Register handlers as protoc-generated ``add_*Servicer_to_server`` does."""
    handlers = {
        "Call": grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=StringValue.FromString,
            response_serializer=StringValue.SerializeToString,
        ),
        "Hold": grpc.unary_stream_rpc_method_handler(
            hold,
            request_deserializer=StringValue.FromString,
            response_serializer=StringValue.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


# --- server child ------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    model: ServerModel
    db: DbMode
    db_path: str
    workers: int


class Gauge:
    """Thread-safe count of held streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.value += delta


def sync_call_handler(db: DbMode, engine: sa.Engine | None) -> Callable[..., StringValue]:
    def echo(request: StringValue, context: grpc.ServicerContext) -> StringValue:
        return StringValue(value=request.value)

    def orm_get(request: StringValue, context: grpc.ServicerContext) -> StringValue:
        assert engine is not None
        with Session(engine) as session:
            return render(session.get(Account, int(request.value)))

    def core_select(request: StringValue, context: grpc.ServicerContext) -> StringValue:
        assert engine is not None
        with engine.connect() as conn:
            return render(conn.execute(BY_PK, {"pk": int(request.value)}).one())

    return {"none": echo, "orm": orm_get, "core": core_select}[db]


def run_threadpool_server(cfg: ServerConfig) -> None:
    engine = None
    if cfg.db != "none":
        engine = sa.create_engine(
            f"sqlite+pysqlite:///{cfg.db_path}",
            pool_size=POOL_SIZE,
            max_overflow=0,
            connect_args={"check_same_thread": False},
        )
    held = Gauge()

    def hold(request: StringValue, context: grpc.ServicerContext) -> Iterator[StringValue]:
        released = threading.Event()
        if not context.add_callback(released.set):  # already cancelled
            return
        held.add(1)
        try:
            yield StringValue(value="open")
            released.wait(HOLD_MAX_S)
        finally:
            held.add(-1)

    server = grpc.server(ThreadPoolExecutor(max_workers=cfg.workers), options=SERVER_OPTIONS)
    register(server, sync_call_handler(cfg.db, engine), hold)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit("ready", port=port)
    control, deadline = stdin_reader()
    try:
        for _ in range(MAX_COMMANDS):
            command, _, arg = (control.read_line(deadline) or "stop 0").partition(" ")
            if command == "stats":
                emit("stats", held_streams=held.value)
            elif command == "stop":
                grace, held_at_stop, started = float(arg or 0), held.value, time.monotonic()
                returned = server.stop(grace).wait(grace + STOP_GRACE_S)
                emit(
                    "stopped", returned=returned, stop_s=time.monotonic() - started, held_at_stop=held_at_stop
                )
                return
    finally:
        server.stop(0)
        if engine is not None:
            engine.dispose()


def async_call_handler(db: DbMode, engine: AsyncEngine | None) -> Callable[..., Awaitable[StringValue]]:
    sessions = async_sessionmaker(engine) if engine is not None else None

    async def echo(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        return StringValue(value=request.value)

    async def orm_get(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        assert sessions is not None
        async with sessions() as session:
            return render(await session.get(Account, int(request.value)))

    async def core_select(request: StringValue, context: grpc.aio.ServicerContext) -> StringValue:
        assert engine is not None
        async with engine.connect() as conn:
            return render((await conn.execute(BY_PK, {"pk": int(request.value)})).one())

    return {"none": echo, "orm": orm_get, "core": core_select}[db]


async def run_aio_server(cfg: ServerConfig) -> None:
    engine = None
    if cfg.db != "none":
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{cfg.db_path}", pool_size=POOL_SIZE, max_overflow=0
        )
    held = 0

    async def hold(request: StringValue, context: grpc.aio.ServicerContext) -> None:
        nonlocal held
        held += 1
        try:
            await context.write(StringValue(value="open"))
            await asyncio.sleep(HOLD_MAX_S)  # cancelled when the client cancels
        finally:
            held -= 1

    server = grpc.aio.server(options=SERVER_OPTIONS)
    register(server, async_call_handler(cfg.db, engine), hold)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit("ready", port=port)
    control, deadline = stdin_reader()
    try:
        for _ in range(MAX_COMMANDS):
            line = await control.read_line_async(deadline)
            command, _, arg = (line or "stop 0").partition(" ")
            if command == "stats":
                emit("stats", held_streams=held)
            elif command == "stop":
                grace, held_at_stop, started = float(arg or 0), held, time.monotonic()
                try:
                    await asyncio.wait_for(server.stop(grace), grace + STOP_GRACE_S)
                    returned = True
                except TimeoutError:
                    returned = False
                emit(
                    "stopped", returned=returned, stop_s=time.monotonic() - started, held_at_stop=held_at_stop
                )
                return
    finally:
        await server.stop(0)
        if engine is not None:
            await engine.dispose()


def server_main(raw: dict[str, Any]) -> None:
    cfg = ServerConfig(**raw)
    if cfg.model == "threadpool":
        run_threadpool_server(cfg)
    elif cfg.model == "aio":
        asyncio.run(run_aio_server(cfg))
    else:
        uvloop.run(run_aio_server(cfg))


# --- load-generator child ----------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    target: str
    concurrency: int
    channels: int
    seed: int


async def run_load(cfg: LoadConfig) -> None:
    rng = random.Random(cfg.seed)
    payloads = [StringValue(value=str(rng.randint(1, ROWS))).SerializeToString() for _ in range(4096)]
    channels = [grpc.aio.insecure_channel(cfg.target, options=CHANNEL_OPTIONS) for _ in range(cfg.channels)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), STARTUP_TIMEOUT_S)
        # No client-side (de)serialisers: the load generator's own cost is not under test.
        stubs = [ch.unary_unary(CALL_METHOD, _registered_method=True) for ch in channels]
        emit("ready")
        control, deadline = stdin_reader()
        line = await control.read_line_async(deadline)
        if line is None:
            return
        _, start_s, end_s = line.split()
        t_start, t_end = float(start_s), float(end_s)
        latencies_us: list[int] = []
        tally = {"completed": 0, "errors": 0}

        async def worker(index: int) -> None:
            stub = stubs[index % len(stubs)]
            for n in range(MAX_CALLS_PER_WORKER):
                begin = time.monotonic()
                if begin >= t_end:
                    return
                try:
                    await stub(
                        payloads[(index + n * cfg.concurrency) % len(payloads)], timeout=CALL_TIMEOUT_S
                    )
                except grpc.aio.AioRpcError:
                    tally["errors"] += 1
                    continue
                end = time.monotonic()
                if t_start <= end <= t_end:
                    tally["completed"] += 1
                    if begin >= t_start:
                        latencies_us.append(round((end - begin) * 1e6))

        await asyncio.gather(*(worker(i) for i in range(cfg.concurrency)))
        emit("result", latencies_us=latencies_us, **tally)
    finally:
        for channel in channels:
            await channel.close()


def load_main(raw: dict[str, Any]) -> None:
    uvloop.run(run_load(LoadConfig(**raw)))


# --- stream-holder child -----------------------------------------------------------------


@dataclass(frozen=True)
class HoldConfig:
    target: str
    streams: int
    channels: int


async def run_hold(cfg: HoldConfig) -> None:
    channels = [grpc.aio.insecure_channel(cfg.target, options=CHANNEL_OPTIONS) for _ in range(cfg.channels)]
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), STARTUP_TIMEOUT_S)
        stubs = [ch.unary_stream(HOLD_METHOD, _registered_method=True) for ch in channels]
        started = time.monotonic()
        calls = [stubs[i % len(stubs)](b"", timeout=HOLD_MAX_S) for i in range(cfg.streams)]

        async def first_message(call: Any) -> bool:
            return await call.read() is not grpc.aio.EOF

        tasks = [asyncio.ensure_future(first_message(call)) for call in calls]
        done, pending = await asyncio.wait(tasks, timeout=OPEN_TIMEOUT_S)
        for task in pending:
            task.cancel()
        received = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
        emit("open", first_messages=received, open_s=time.monotonic() - started)
        control, deadline = stdin_reader()
        await control.read_line_async(deadline)  # "cancel", or EOF
        for call in calls:
            call.cancel()
        emit("cancelled", streams=len(calls))
    finally:
        for channel in channels:
            await channel.close()


def hold_main(raw: dict[str, Any]) -> None:
    uvloop.run(run_hold(HoldConfig(**raw)))


CHILD_ROLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "_server": server_main,
    "_load": load_main,
    "_hold": hold_main,
}
PR_SET_PDEATHSIG = 1


def become_child(cpu: int, parent_pid: int) -> None:
    """First thing a child does, while it is still single-threaded: pin itself to one CPU
    (every thread grpc/aiosqlite start later inherits it) and ask the kernel to SIGKILL it
    if the orchestrator dies, so no child can be orphaned."""
    os.sched_setaffinity(0, {cpu})
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the orchestrator died before prctl took effect
        sys.exit(1)


# --- orchestrator: processes -------------------------------------------------------------


class Child:
    def __init__(self, name: str, role: str, config: Any, cpu: int) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                role,
                str(cpu),
                str(os.getpid()),
                json.dumps(asdict(config)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # Ctrl-C reaches only the orchestrator, which cleans up
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin = self.proc.stdin
        self._out = LineReader(self.proc.stdout.fileno())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: str) -> None:
        self._stdin.write(f"{command}\n".encode())

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        line = self._out.read_line(time.monotonic() + timeout)
        if line is None:
            raise BenchError(
                f"{self.name}: no {event!r} within {timeout:.0f}s (exit code {self.proc.poll()})"
            )
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise BenchError(f"{self.name}: expected {event!r}, got {line[:200]}")
        return message

    def reap(self, timeout: float = 10.0) -> int | None:
        """Wait for a normal exit; kill if it does not come."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.proc.wait(timeout=timeout)
        self.kill()
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class Children(contextlib.AbstractContextManager["Children"]):
    """Every subprocess of the run; all still running are killed on exit, error or Ctrl-C."""

    def __init__(self, server_cpu: int, load_cpu: int) -> None:
        self.server_cpu, self.load_cpu = server_cpu, load_cpu
        self._all: list[Child] = []

    def spawn(self, name: str, role: str, config: Any, cpu: int) -> Child:
        child = Child(name, role, config, cpu)
        self._all.append(child)
        return child

    def __exit__(self, *exc: object) -> None:
        for child in self._all:
            child.kill()


# --- orchestrator: /proc sampling --------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory(pid: int) -> tuple[float, int]:
    """(RSS in MB, thread count)."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


@dataclass(frozen=True)
class CpuJiffies:
    """One CPU's counters from /proc/stat (units of 1/CLK_TCK s)."""

    user_system: int  # user + nice + system: process time of whoever ran there
    steal: int  # time the hypervisor gave to someone else
    total: int

    @classmethod
    def read(cls, cpu: int) -> CpuJiffies:
        for line in Path("/proc/stat").read_text().splitlines():
            label, *values = line.split()
            if label == f"cpu{cpu}":
                n = [int(v) for v in values]
                return cls(user_system=n[0] + n[1] + n[2], steal=n[7], total=sum(n[:8]))
        return cls(0, 0, 0)


def all_threads_pinned(pid: int, cpu: int) -> bool:
    pinned = True
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            pinned &= os.sched_getaffinity(int(tid)) == {cpu}
    return pinned


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def percentile(ordered: Sequence[int], q: float) -> float:
    if not ordered:
        return math.nan
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


# --- orchestrator: measurements ----------------------------------------------------------


@dataclass(frozen=True)
class Options:
    seconds: float
    warmup: float
    rounds: int
    load_procs: int


@dataclass
class Window:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    server_util: float
    loadgen_util: float
    other_load: float
    steal_pct: float
    completed: int
    errors: int


def start_server(children: Children, name: str, cfg: ServerConfig) -> tuple[Child, str]:
    server = children.spawn(name, "_server", cfg, children.server_cpu)
    port = server.expect("ready", STARTUP_TIMEOUT_S)["port"]
    return server, f"127.0.0.1:{port}"


def stop_server(server: Child, grace: float) -> dict[str, Any]:
    server.send(f"stop {grace}")
    stopped = server.expect("stopped", grace + 2 * STOP_GRACE_S)
    stopped["exit_code"] = server.reap()
    return stopped


def measure_unary(children: Children, server: Child, target: str, opts: Options) -> Window:
    """Drive CONCURRENCY calls in flight against `target` and measure one window."""
    shares = [
        CONCURRENCY // opts.load_procs + (i < CONCURRENCY % opts.load_procs) for i in range(opts.load_procs)
    ]
    clients = [
        children.spawn(
            f"load{i}", "_load", LoadConfig(target, share, LOAD_CHANNELS, seed=i), children.load_cpu
        )
        for i, share in enumerate(shares)
    ]
    for client in clients:
        client.expect("ready", STARTUP_TIMEOUT_S)
    t_start = time.monotonic() + opts.warmup
    t_end = t_start + opts.seconds
    for client in clients:
        client.send(f"go {t_start!r} {t_end!r}")
    sleep_until(t_start)
    wall0, server0, core0 = time.monotonic(), proc_cpu_s(server.pid), CpuJiffies.read(children.server_cpu)
    load0 = sum(proc_cpu_s(c.pid) for c in clients)
    sleep_until(t_end)
    wall1, server1, core1 = time.monotonic(), proc_cpu_s(server.pid), CpuJiffies.read(children.server_cpu)
    load1 = sum(proc_cpu_s(c.pid) for c in clients)
    results = [c.expect("result", CALL_TIMEOUT_S + STARTUP_TIMEOUT_S) for c in clients]
    for client in clients:
        client.reap()
    completed = sum(r["completed"] for r in results)
    errors = sum(r["errors"] for r in results)
    if errors:
        raise BenchError(f"{errors} unary calls to {target} failed")
    latencies = sorted(lat for r in results for lat in r["latencies_us"])
    wall = wall1 - wall0
    jiffies = core1.total - core0.total
    # Other processes' CPU time on the server's core: the machine is shared.
    other_s = (core1.user_system - core0.user_system) / CLK_TCK - (server1 - server0)
    return Window(
        rps=completed / (t_end - t_start),
        p50_ms=percentile(latencies, 0.50) / 1000,
        p99_ms=percentile(latencies, 0.99) / 1000,
        cpu_us_per_req=(server1 - server0) / max(completed, 1) * 1e6,
        server_util=(server1 - server0) / wall,
        loadgen_util=(load1 - load0) / wall,
        other_load=max(0.0, other_s / wall),
        steal_pct=100 * (core1.steal - core0.steal) / jiffies if jiffies else 0.0,
        completed=completed,
        errors=errors,
    )


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    model: ServerModel
    db: DbMode


SCENARIOS = (
    Scenario("a", "thread-pool grpc.server, echo", "threadpool", "none"),
    Scenario("b", "grpc.aio (asyncio loop), echo", "aio", "none"),
    Scenario("c", "grpc.aio + uvloop, echo", "aio-uvloop", "none"),
    Scenario("d", "thread-pool + sync ORM session.get", "threadpool", "orm"),
    Scenario("e", "thread-pool + sync Core select", "threadpool", "core"),
    Scenario("f", "grpc.aio + async ORM get (aiosqlite)", "aio", "orm"),
    Scenario("g", "grpc.aio + async Core select (aiosqlite)", "aio", "core"),
)


def run_scenario(children: Children, sc: Scenario, db_path: str, opts: Options) -> dict[str, Any]:
    workers = THREADPOOL_WORKERS if sc.model == "threadpool" else 0
    server, target = start_server(
        children, f"server-{sc.key}", ServerConfig(sc.model, sc.db, db_path, workers)
    )
    window = measure_unary(children, server, target, opts)
    pinned = all_threads_pinned(server.pid, children.server_cpu)
    stop_server(server, grace=0)
    return {"key": sc.key, "title": sc.title, "pinned": pinned, **asdict(window)}


def median_of_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over rounds (identity for one round)."""
    merged = dict(runs[0])
    for metric, value in runs[0].items():
        if isinstance(value, float):
            merged[metric] = statistics.median(r[metric] for r in runs)
    merged["pinned"] = all(r["pinned"] for r in runs)
    merged["rounds_rps"] = [r["rps"] for r in runs]
    return merged


def run_streaming(children: Children, model: ServerModel, opts: Options) -> dict[str, Any]:
    workers = STREAM_WORKERS if model == "threadpool" else 0
    server, target = start_server(children, f"stream-{model}", ServerConfig(model, "none", "", workers))
    idle = measure_unary(children, server, target, opts)
    idle_rss, idle_threads = proc_memory(server.pid)  # after unary load, before any stream
    holder = children.spawn(
        f"holder-{model}", "_hold", HoldConfig(target, STREAMS, HOLD_CHANNELS), children.load_cpu
    )
    opened = holder.expect("open", OPEN_TIMEOUT_S + STARTUP_TIMEOUT_S)
    server.send("stats")
    held_streams = server.expect("stats", STARTUP_TIMEOUT_S)["held_streams"]
    held_rss, held_threads = proc_memory(server.pid)
    held = measure_unary(children, server, target, opts)
    peak_rss, peak_threads = proc_memory(server.pid)
    holder.send("cancel")
    holder.expect("cancelled", STARTUP_TIMEOUT_S)
    holder.reap()
    cancelled_at = time.monotonic()
    remaining = held_streams
    for _ in range(int(DRAIN_TIMEOUT_S / 0.05)):  # poll until the handlers have all returned
        server.send("stats")
        remaining = server.expect("stats", STARTUP_TIMEOUT_S)["held_streams"]
        if remaining == 0 or time.monotonic() - cancelled_at > DRAIN_TIMEOUT_S:
            break
        time.sleep(0.05)
    drain_s = time.monotonic() - cancelled_at
    stopped = stop_server(server, grace=STOP_GRACE_S)
    return {
        "model": model,
        "workers": workers or None,
        "streams": STREAMS,
        "first_messages": opened["first_messages"],
        "open_s": opened["open_s"],
        "held_on_server": held_streams,
        "idle_rps": idle.rps,
        "held_rps": held.rps,
        "held_vs_idle": held.rps / idle.rps,
        "held_p99_ms": held.p99_ms,
        "held_server_util": held.server_util,
        "rss_mb_idle": idle_rss,
        "rss_mb_held": max(held_rss, peak_rss),
        "threads_idle": idle_threads,
        "threads_held": max(held_threads, peak_threads),
        "held_after_cancel": remaining,
        "drain_s": drain_s,
        "stop_returned": stopped["returned"],
        "stop_s": stopped["stop_s"],
        "exit_code": stopped["exit_code"],
    }


# --- report ------------------------------------------------------------------------------


def scenario_table(rows: list[dict[str, Any]]) -> str:
    base = rows[0]["rps"]
    lines = [
        (
            "| scenario | rps | ratio to (a) | p50 ms | p99 ms | server CPU µs/req "
            "| server CPU util | load-gen CPU util | other load on server core |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| ({r['key']}) {r['title']} | {r['rps']:,.0f} | {r['rps'] / base:.2f}x "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_us_per_req']:.0f} "
            f"| {r['server_util']:.0%} | {r['loadgen_util']:.0%} | {r['other_load']:.0%} |"
        )
    return "\n".join(lines)


def streaming_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| server | first msg / streams | open s | unary rps idle → held (ratio) "
            "| p99 ms held | RSS MB idle → held | threads idle → held "
            "| held after cancel | stop(grace=5) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = f"thread-pool (max_workers={r['workers']})" if r["model"] == "threadpool" else "grpc.aio"
        stop = f"returned in {r['stop_s']:.2f} s" if r["stop_returned"] else "DID NOT RETURN"
        lines.append(
            f"| {name} | {r['first_messages']:,} / {r['streams']:,} | {r['open_s']:.2f} "
            f"| {r['idle_rps']:,.0f} → {r['held_rps']:,.0f} ({r['held_vs_idle']:.2f}x) "
            f"| {r['held_p99_ms']:.2f} | {r['rss_mb_idle']:.0f} → {r['rss_mb_held']:.0f} "
            f"| {r['threads_idle']} → {r['threads_held']} | {r['held_after_cancel']} | {stop} |"
        )
    return "\n".join(lines)


def saturation_check(rows: dict[str, dict[str, Any]]) -> str:
    """Say, for every scenario whose server core was not saturated, why not."""
    reasons: dict[str, list[str]] = {"client": [], "contended": [], "waiting": []}
    for key, r in rows.items():
        if r["server_util"] >= 0.9:
            continue
        if r["loadgen_util"] >= 0.85:
            reasons["client"].append(key)
        elif r["other_load"] >= 0.1:
            reasons["contended"].append(key)
        else:
            reasons["waiting"].append(key)
    if not any(reasons.values()):
        return "the server core was ≥90% busy in every scenario, so the load generator kept up"
    text = {
        "client": "the load generator was the limit, so compare CPU µs/req there",
        "contended": "other processes took part of the server's core (lowers rps, not CPU µs/req)",
        "waiting": (
            "neither the load generator nor other processes explain it: the server was "
            "waiting, or the VM was descheduled (lowers rps, not CPU µs/req)"
        ),
    }
    parts = [f"in ({', '.join(keys)}) {text[why]}" for why, keys in reasons.items() if keys]
    return "the server core was ≥90% busy in the other scenarios; " + "; ".join(parts)


def verdict(rows: dict[str, dict[str, Any]], streams: list[dict[str, Any]]) -> str:
    """One paragraph computed from the numbers.  The decision uses CPU µs per request, which
    other load on this shared machine barely moves; rps ratios are reported alongside."""

    def rps(key: str) -> float:
        return float(rows[key]["rps"])

    def cpu(key: str) -> float:
        return float(rows[key]["cpu_us_per_req"])

    cheaper = cpu("a") < min(cpu("b"), cpu("c")) and cpu("d") < cpu("f") and cpu("e") < cpu("g")
    faster = rps("a") > max(rps("b"), rps("c")) and rps("d") > rps("f") and rps("e") > rps("g")
    stream_bits = []
    for s in streams:
        ok = s["first_messages"] == s["streams"] and s["held_after_cancel"] == 0 and s["stop_returned"]
        stream_bits.append(
            f"{'thread-pool' if s['model'] == 'threadpool' else 'grpc.aio'} "
            f"{'held, served and drained' if ok else 'FAILED to hold or drain'} {s['streams']:,} "
            f"streams ({s['threads_held']} threads, {s['rss_mb_held']:.0f} MB RSS, unary rps "
            f"{s['held_vs_idle']:.2f}x of idle)"
        )
    conclusion = "CONFIRMS" if cheaper else "does NOT confirm"
    agreement = (
        "rps ratios agree"
        if faster
        else "rps ratios do not all agree, so rerun with --rounds 3 before relying on them"
    )
    return (
        f"Thread-pool serves {rps('a') / rps('b'):.2f}x the unary rps of grpc.aio and "
        f"{rps('a') / rps('c'):.2f}x grpc.aio+uvloop, at {cpu('a'):.0f} vs {cpu('b'):.0f} µs server "
        f"CPU per call ({cpu('b') / cpu('a'):.2f}x; probe: {PROBE['threadpool_vs_aio_rps']}x rps, "
        f"{PROBE['cpu_us_threadpool']:.0f} vs {PROBE['cpu_us_aio']:.0f} µs). uvloop changes "
        f"grpc.aio by {rps('c') / rps('b') - 1:+.0%} rps and {cpu('c') / cpu('b') - 1:+.0%} CPU per "
        f"call (probe: +{PROBE['uvloop_gain']:.0%} rps). With one DB read per call, sync SQLAlchemy "
        f"on the thread-pool keeps {rps('d') / rps('a'):.2f}x (ORM) / {rps('e') / rps('a'):.2f}x "
        f"(Core) of its no-DB rps and async SQLAlchemy over aiosqlite keeps "
        f"{rps('f') / rps('b'):.2f}x / {rps('g') / rps('b'):.2f}x of grpc.aio's (probe: "
        f"{PROBE['async_orm_vs_nodb']}x / {PROBE['async_core_vs_nodb']}x), so the thread-pool stack "
        f"serves {rps('d') / rps('f'):.2f}x (ORM) / {rps('e') / rps('g'):.2f}x (Core) the aio "
        f"stack's rps at {cpu('f') / cpu('d'):.2f}x / {cpu('g') / cpu('e'):.2f}x less CPU per call. "
        f"Streaming: {'; '.join(stream_bits)}. Measurement check: {saturation_check(rows)}. "
        f"On CPU per call this {conclusion} the tentative choice of thread-pool grpc.server + sync "
        f"SQLAlchemy on this machine; {agreement}."
    )


def machine_info() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlalchemy": sa.__version__,
        "protobuf": protobuf_version,
        "uvloop": getattr(uvloop, "__version__", "?"),
    }


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per scenario")
    parser.add_argument("--quick", action="store_true", help="~1 s windows: a smoke run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat scenarios a-g, report medians")
    parser.add_argument("--load-procs", type=int, default=1, help="load-generator processes")
    args = parser.parse_args(argv)
    if args.quick:
        return Options(seconds=1.0, warmup=0.5, rounds=1, load_procs=args.load_procs)
    if args.seconds <= 0 or not 1 <= args.rounds <= 10 or not 1 <= args.load_procs <= CONCURRENCY:
        parser.error("need --seconds > 0, 1 <= --rounds <= 10, 1 <= --load-procs <= 32")
    return Options(
        seconds=args.seconds,
        warmup=min(1.5, max(0.5, args.seconds / 4)),
        rounds=args.rounds,
        load_procs=args.load_procs,
    )


def run(opts: Options) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("need at least 2 CPUs: server and load generator each get their own", file=sys.stderr)
        return 2
    server_cpu, load_cpu = cpus[0], cpus[1]
    os.sched_setaffinity(0, {load_cpu})  # keep the orchestrator off the server's core
    began = time.monotonic()
    print(
        f"server on CPU {server_cpu}, load generator on CPU {load_cpu}; {opts.seconds:g} s "
        f"windows after {opts.warmup:g} s warm-up, {CONCURRENCY} calls in flight, "
        f"{opts.rounds} round(s)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="kit-bench-") as tmp, Children(server_cpu, load_cpu) as children:
        db_path = Path(tmp) / "bench.sqlite3"
        create_database(db_path)
        runs: dict[str, list[dict[str, Any]]] = {sc.key: [] for sc in SCENARIOS}
        for round_no in range(opts.rounds):
            for sc in SCENARIOS:
                result = run_scenario(children, sc, str(db_path), opts)
                runs[sc.key].append(result)
                print(
                    f"  round {round_no + 1} ({sc.key}) {result['rps']:,.0f} rps, "
                    f"{result['cpu_us_per_req']:.0f} µs/req, util {result['server_util']:.0%}",
                    flush=True,
                )
        rows = {key: median_of_rounds(results) for key, results in runs.items()}
        streams = []
        for model in ("threadpool", "aio"):
            streams.append(run_streaming(children, model, opts))
            print(f"  streaming {model}: done", flush=True)
    ordered = [rows[sc.key] for sc in SCENARIOS]
    text = verdict(rows, streams)
    max_steal = max(r["steal_pct"] for r in ordered)
    print(f"\n## Unary scenarios ({CONCURRENCY} in flight, plaintext 127.0.0.1)\n")
    print(scenario_table(ordered))
    print(
        f"\nServer CPU util = server process CPU time / window (≈100%: its core was saturated, "
        f"so the load generator kept up). Other load = other processes' CPU on the server's core "
        f"(this machine is shared: it lowers rps, not CPU µs/req). CPU steal on the server core: "
        f"max {max_steal:.1f}%. All server threads pinned: "
        f"{'yes' if all(r['pinned'] for r in ordered) else 'NO'}. mTLS is not included: its cost "
        f"is a per-connection handshake, not per call."
    )
    print(f"\n## Streaming: {STREAMS:,} held server-streaming calls\n")
    print(streaming_table(streams))
    print(f"\n## Verdict\n\n{text}")
    elapsed = time.monotonic() - began
    print(f"\n(wall time {elapsed:.0f} s; JSON in {RESULTS_PATH})")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(
        json.dumps(
            {
                "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                "machine": machine_info(),
                "options": asdict(opts),
                "settings": {
                    "concurrency": CONCURRENCY,
                    "load_channels": LOAD_CHANNELS,
                    "threadpool_workers": THREADPOOL_WORKERS,
                    "pool_size": POOL_SIZE,
                    "rows": ROWS,
                    "streams": STREAMS,
                    "stream_workers": STREAM_WORKERS,
                    "transport": "plaintext HTTP/2 on 127.0.0.1; mTLS not included",
                },
                "probe": PROBE,
                "scenarios": ordered,
                "streaming": streams,
                "verdict": text,
                "wall_s": elapsed,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill <pid>` also unwinds through the cleanup in run()


def main(argv: Sequence[str]) -> int:
    if len(argv) == 4 and argv[0] in CHILD_ROLES:
        become_child(cpu=int(argv[1]), parent_pid=int(argv[2]))
        CHILD_ROLES[argv[0]](json.loads(argv[3]))
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(parse_args(argv))
    except KeyboardInterrupt:
        print("\ninterrupted; all benchmark subprocesses killed", file=sys.stderr)
        return 130
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
