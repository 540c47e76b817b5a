"""What the HTTP/JSON edge costs: one unary RPC called directly over mTLS gRPC and through
``python -m gateway``, by measurement.

What is measured
----------------
The auth service's ``GetJwks`` (public, no token, a cheap read of the signing keys) runs as
``python -m services.auth`` with real development certificates in a temporary POLY_HOME,
and ``python -m gateway`` routes only that service (``POLY_GATEWAY_BACKENDS``). Both are
pinned to one CPU with ``taskset``; the load generators run pinned to the other CPU:

    direct  ``h2load`` (nghttp2): POST ``/poly.auth.v1.AuthService/GetJwks`` over mTLS HTTP/2,
            a gRPC-framed empty request, ``content-type: application/grpc``, ``te: trailers``;
            ``CONCURRENCY`` streams in flight over ``H2_CONNECTIONS`` connections
    edge    ``wrk`` (HTTP/1.1 keep-alive) ``GET /.well-known/jwks.json`` on the gateway,
            ``CONCURRENCY`` connections; a Lua script reports the percentiles as JSON

h2load has no client-certificate option, so a 20-line ``LD_PRELOAD`` shim (compiled here
with ``cc``) loads the CLI's certificate and key into every ``SSL_CTX`` h2load creates. If
``h2load`` or ``cc`` is missing, a grpc.aio load generator (pinned the same way) replaces it
and the output says so. Every path is checked once before it is measured: the gRPC reply
is the Jwks the Python client gets (byte count per response checked again after each
h2load run, since h2load cannot see ``grpc-status``), the HTTP reply a 200 with the same keys.

Each path runs at ``CONCURRENCY`` in flight (throughput) and at 1 in flight (low-load
latency), each after a warm-up run, for a fixed window:

* rps               requests completed / window, as the load generator reports them
* p50 / p99         load-generator latency of each request
* server CPU us/req utime+stime (``/proc/<pid>/stat``) of auth [+ gateway] over the window /
                    requests; the edge rows also split it into backend and gateway
* server util       that CPU time / wall time (~100%: the server core was saturated)
* load-gen util     the load generator's CPU time / wall time on its own core
* other load        CPU time other processes took on the server core in the window

Edge efficiency = rps through the edge / rps direct (issue 6's goal: >= 0.80, i.e. the
gateway spends at most a quarter of what the backend spends on the same call, and adds
< 1 ms p50 at low load).

How to read it
--------------
The machine is shared: compare the rows of one run, not runs. When server util is near 100%
at load, rps and CPU us/req agree; otherwise the other columns say why (load generator at
its limit, other load on the server core). Both processes run at POLY_LOG_LEVEL=WARNING, so
the kit's per-call access line (INFO) is off, as in a quiet production log level; with it on,
the backend spends more per call and the edge's share looks smaller than it is.

Recorded run (2026-11-26, this project's 2-core machine, one run, machine otherwise quiet)
----------------------------------------------------------------------------------------
    path    in flight   rps   p50 ms  p99 ms  server CPU us/req (backend + gateway)
    direct     32      1092   26.88   76.34    915
    edge       32       796   38.83   85.31   1254 (846 + 408)
    direct      1      1078    0.89    1.28    909
    edge        1       640    1.53    2.39   1546 (940 + 606)
    Edge efficiency 0.73 (quick runs the same hour: 0.74, 0.74, 0.75, 0.76, 0.80); the edge
    adds 0.64 ms p50 at 1 in flight.
    The floor: a bare grpc.aio client, one channel, 32 in flight, spends 190 us of CPU per
    call (0.22x the backend's), so the 0.25x goal leaves ~20 us for all the HTTP and JSON
    work; the gateway's own work above the floor is ~200 us. grpclib's client measured the
    same floor (~220 us, a throwaway probe), and uvloop, no retries/BDP probes, and the sync
    client's futures did not lower the gateway's CPU per call. py-spy of the gateway at load:
    about half its samples are the grpc.aio client (``_invoke`` and the poller thread).

Usage: ``python bench/edge.py [--seconds N] [--quick] [--concurrency C]``. Results are printed
as markdown and written to ``bench/results/edge.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from machine import (  # noqa: E402
    BenchError,
    all_threads_pinned,
    children_cpu_s,
    core_busy_s,
    free_port,
    percentile,
    proc_cpu_s,
    run_to_the_end,
)

from poly.auth.v1 import auth_service_pb2 as auth_pb  # noqa: E402
from services.auth import keys  # noqa: E402
from services.cli import system_settings  # noqa: E402
from services.kit import config, tls  # noqa: E402

SERVICE = "poly.auth.v1.AuthService"
GRPC_PATH = f"/{SERVICE}/GetJwks"
HTTP_PATH = "/.well-known/jwks.json"
CONCURRENCY = 32
H2_CONNECTIONS = 4
STARTUP_TIMEOUT_S = 60.0
TOOL_SLACK_S = 30.0  # a load-generator run is killed this long after its window should end
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "edge.json"
PROBE = {"efficiency": 0.64, "edge_cpu_us": 160.0, "backend_cpu_us": 285.0, "goal_efficiency": 0.80}

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
int SSL_CTX_use_certificate_chain_file(SSL_CTX *, const char *);
int SSL_CTX_use_PrivateKey_file(SSL_CTX *, const char *, int);
/* h2load cannot present a client certificate: give every SSL_CTX it makes one. */
SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    static SSL_CTX *(*real)(const SSL_METHOD *);
    if (!real) real = (SSL_CTX *(*)(const SSL_METHOD *))dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("EDGE_BENCH_CERT"), *key = getenv("EDGE_BENCH_KEY");
    if (ctx && cert && key && (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
                               || SSL_CTX_use_PrivateKey_file(ctx, key, 1 /* PEM */) != 1))
        abort();
    return ctx;
}
"""

WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"status_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# --- the system under test ---------------------------------------------------------------


@dataclass
class System:
    home: Path
    environ: dict[str, str]
    auth_port: int
    gateway_port: int
    server_cpu: int
    processes: dict[str, subprocess.Popen[bytes]]

    def settings(self, component: str) -> config.Settings:
        return config.load(component, self.environ)

    def start(self, name: str, module: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLY_")}
        log = (self.home / f"{name}.log").open("wb")
        popen = subprocess.Popen(
            ["taskset", "-c", str(self.server_cpu), sys.executable, "-m", module],
            cwd=ROOT,
            env={**env, **self.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = popen
        return popen

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        for popen in self.processes.values():
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            if popen.poll() is None:
                popen.wait(5)


@contextlib.contextmanager
def running_system(home: Path, server_cpu: int) -> Iterator[System]:
    tls.ensure_certificates(home / "certs", config.COMPONENTS)
    ports = {name: free_port() for name in config.DEFAULT_PORTS}
    environ = {
        "POLY_HOME": str(home),
        "POLY_GRACE_SECONDS": "2",
        "POLY_LOG_LEVEL": "WARNING",  # no per-call access line from the kit
        "POLY_SMTP_PORT": str(free_port()),
        **{f"POLY_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "POLY_GATEWAY_BACKENDS": f"{SERVICE}=localhost:{ports['auth']}",
    }
    system = System(home, environ, ports["auth"], ports["gateway"], server_cpu, {})
    keys.ensure_key_encryption_key(system_settings.load(system.environ).key_encryption_key_file)
    try:
        auth = system.start("auth", "services.auth")
        wait_for_health(system, auth)
        gateway = system.start("gateway", "gateway")
        wait_for_http(system, gateway, "/readyz")
        yield system
    finally:
        system.stop()


def wait_for_health(system: System, popen: subprocess.Popen[bytes]) -> None:
    cli = system.settings("cli")
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with grpc.secure_channel(f"localhost:{system.auth_port}", tls.channel_credentials(cli.tls)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and popen.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.1)
    raise BenchError(f"auth did not become SERVING; its output:\n{system.log('auth')}")


def wait_for_http(system: System, popen: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and popen.poll() is None:
        url = f"http://127.0.0.1:{system.gateway_port}{path}"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"the gateway did not answer {path}; its output:\n{system.log('gateway')}")


def check_paths(system: System) -> int:
    """Both paths answer the same key set; returns the gRPC response message's size."""
    cli = system.settings("cli")
    with grpc.secure_channel(f"localhost:{system.auth_port}", tls.channel_credentials(cli.tls)) as channel:
        reply: auth_pb.Jwks = channel.unary_unary(
            GRPC_PATH,
            request_serializer=auth_pb.GetJwksRequest.SerializeToString,
            response_deserializer=auth_pb.Jwks.FromString,
        )(auth_pb.GetJwksRequest(), timeout=10)
    with urllib.request.urlopen(f"http://127.0.0.1:{system.gateway_port}{HTTP_PATH}", timeout=10) as answer:
        body = json.loads(answer.read())
    kids = sorted(k.kid for k in reply.keys)
    if not kids or sorted(k["kid"] for k in body["keys"]) != kids:
        raise BenchError(f"the two paths disagree: gRPC kids {kids}, HTTP body {body}")
    return reply.ByteSize()


# --- load generators ---------------------------------------------------------------------


@dataclass
class Run:
    requests: int
    duration_s: float
    p50_us: float
    p99_us: float
    client_cpu_s: float = math.nan
    """CPU the load generator itself spent in the window (the grpc.aio one only)."""


def run_tool(argv: list[str], env: dict[str, str], seconds: float) -> str:
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + TOOL_SLACK_S, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"{argv[0:4]} exited {done.returncode}: {done.stderr[-2000:]}{done.stdout[-2000:]}")
    return done.stdout


class Wrk:
    name = "wrk"

    def __init__(self, url: str, tmp: Path, load_cpu: int) -> None:
        self.url, self.load_cpu = url, load_cpu
        self.script = tmp / "report.lua"
        self.script.write_text(WRK_LUA)

    def run(self, in_flight: int, seconds: float) -> Run:
        out = run_tool(
            [
                "taskset",
                "-c",
                str(self.load_cpu),
                "wrk",
                "-t1",
                f"-c{in_flight}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(self.script),
                self.url,
            ],
            dict(os.environ),
            seconds,
        )
        line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise BenchError(f"wrk printed no report: {out[-2000:]}")
        found = json.loads(line.removeprefix("WRKJSON "))
        if found["errors"] or found["status_errors"]:
            raise BenchError(f"wrk saw failures: {found}")
        return Run(found["requests"], found["duration_us"] / 1e6, found["p50_us"], found["p99_us"])


class H2load:
    name = "h2load (mTLS via LD_PRELOAD shim)"

    def __init__(
        self,
        url: str,
        tmp: Path,
        load_cpu: int,
        cli: config.Settings,
        reply_bytes: int,
        *,
        request: bytes = b"",
        headers: Sequence[str] = (),
    ) -> None:
        """`request`: the serialized request message (GetJwks's is empty); `headers`: more
        request headers, ``name: value`` (e.g. an authorization header)."""
        self.url, self.tmp, self.load_cpu, self.headers = url, tmp, load_cpu, tuple(headers)
        self.body = tmp / "request.bin"
        self.body.write_bytes(b"\x00" + len(request).to_bytes(4, "big") + request)  # not compressed
        self.frame_bytes = 5 + reply_bytes
        shim = tmp / "clientcert.so"
        source = tmp / "clientcert.c"
        source.write_text(SHIM_C)
        built = subprocess.run(
            ["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl", "-lssl"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if built.returncode != 0:
            raise BenchError(f"cannot build the client-certificate shim: {built.stderr[-1000:]}")
        self.env = {
            **os.environ,
            "LD_PRELOAD": str(shim),
            "EDGE_BENCH_CERT": str(cli.tls.cert_file),
            "EDGE_BENCH_KEY": str(cli.tls.key_file),
        }

    def run(self, in_flight: int, seconds: float) -> Run:
        log = self.tmp / "h2load.log"
        out = run_h2load(
            self.load_cpu,
            min(H2_CONNECTIONS, in_flight),
            in_flight,
            seconds,
            log,
            [
                "-d",
                str(self.body),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                *(argument for header in self.headers for argument in ("-H", header)),
                self.url,
            ],
            self.env,
        )
        report = h2load_report(out, log)
        # A gRPC error carries no message, so every succeeded reply must have brought one
        # (a reply still arriving when the window closed may add a few bytes more).
        if (
            report.succeeded != report.run.requests
            or report.data_bytes // self.frame_bytes < report.run.requests
        ):
            raise BenchError(
                f"h2load: {report.succeeded}/{report.run.requests} succeeded, {report.data_bytes} data bytes "
                f"for {report.run.requests} replies of {self.frame_bytes}: {out[-1500:]}"
            )
        return report.run


def run_h2load(
    load_cpu: int,
    connections: int,
    in_flight: int,
    seconds: float,
    log: Path,
    arguments: Sequence[str],
    env: dict[str, str],
) -> str:
    """h2load pinned to `load_cpu`: `in_flight` calls over `connections` for `seconds`, each
    call's latency in `log`; what it printed."""
    log.unlink(missing_ok=True)  # h2load appends to it
    command = ["taskset", "-c", str(load_cpu), "h2load", f"-c{connections}", f"-m{in_flight // connections}"]
    return run_tool([*command, f"-D{max(1, round(seconds))}", f"--log-file={log}", *arguments], env, seconds)


@dataclass(frozen=True)
class H2loadReport:
    run: Run
    succeeded: int
    data_bytes: int
    statuses_2xx: int


def h2load_report(out: str, log: Path) -> H2loadReport:
    """What one h2load run printed (`out`) and logged per request (`log`, ``--log-file``)."""
    stats: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            stats.setdefault(key.strip(), value.strip())
    done = int(stats["requests"].split("started, ")[1].split()[0])  # "... N done, ..."
    succeeded = int(stats["requests"].split("done, ")[1].split()[0])
    data_bytes = int(stats["traffic"].split("headers")[1].split("(")[-1].split(")")[0])
    ok = int(stats["status codes"].split()[0])  # "N 2xx, ..."
    finished = out.split("finished in ")[1].split(",", maxsplit=1)[0]
    duration = float(finished[:-2]) / 1000 if finished.endswith("ms") else float(finished[:-1])
    latencies = sorted(
        int(cols[2]) for cols in (row.split("\t") for row in log.read_text().splitlines()) if len(cols) >= 3
    )
    run = Run(done, duration, percentile(latencies, 0.50), percentile(latencies, 0.99))
    return H2loadReport(run, succeeded, data_bytes, ok)


class PythonGrpcLoad:
    """Fallback when h2load cannot be used: grpc.aio calls from a child pinned to the load CPU."""

    name = "grpc.aio client (h2load unavailable)"

    def __init__(
        self, address: str, load_cpu: int, environ: dict[str, str], *, connections: int = H2_CONNECTIONS
    ) -> None:
        self.address, self.load_cpu, self.environ = address, load_cpu, environ
        self.connections = connections

    def run(self, in_flight: int, seconds: float) -> Run:
        spec = json.dumps(
            {
                "address": self.address,
                "in_flight": in_flight,
                "seconds": seconds,
                "environ": self.environ,
                "connections": self.connections,
            }
        )
        out = run_tool(
            ["taskset", "-c", str(self.load_cpu), sys.executable, __file__, "_grpcload", spec],
            dict(os.environ),
            seconds,
        )
        found = json.loads(out.strip().splitlines()[-1])
        if found["errors"]:
            raise BenchError(f"grpc.aio load generator: {found['errors']} calls failed")
        return Run(found["requests"], found["duration_s"], found["p50_us"], found["p99_us"], found["cpu_s"])


async def _grpc_load(spec: dict[str, Any]) -> dict[str, Any]:
    cli = config.load("cli", spec["environ"])
    credentials = tls.channel_credentials(cli.tls)
    channels = [
        grpc.aio.secure_channel(spec["address"], credentials, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(min(spec["connections"], spec["in_flight"]))
    ]
    calls = [
        c.unary_unary(
            GRPC_PATH,
            request_serializer=auth_pb.GetJwksRequest.SerializeToString,
            response_deserializer=auth_pb.Jwks.FromString,
        )
        for c in channels
    ]
    request, latencies, errors = auth_pb.GetJwksRequest(), [], 0
    end = time.perf_counter() + spec["seconds"]

    async def worker(index: int) -> None:
        nonlocal errors
        call = calls[index % len(calls)]
        while (start := time.perf_counter()) < end:
            try:
                await call(request, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append((time.perf_counter() - start) * 1e6)

    began, cpu_began = time.perf_counter(), time.process_time()  # all threads: grpc's poller too
    await asyncio.gather(*(worker(i) for i in range(spec["in_flight"])))
    duration, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    for channel in channels:
        await channel.close()
    latencies.sort()
    return {
        "requests": len(latencies),
        "duration_s": duration,
        "errors": errors,
        "p50_us": percentile(latencies, 0.5),
        "p99_us": percentile(latencies, 0.99),
        "cpu_s": cpu,
    }


# --- measurements ------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    in_flight: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_req: float
    backend_us_per_req: float
    gateway_us_per_req: float
    server_util: float
    loadgen_util: float
    other_load: float
    requests: int
    pinned: bool


def measure(system: System, path: str, tool: Any, in_flight: int, seconds: float, warmup: float) -> Row:
    tool.run(in_flight, warmup)
    pids = {name: p.pid for name, p in system.processes.items()}
    counted = ["auth", "gateway"] if path == "edge" else ["auth"]
    before = {name: proc_cpu_s(pid) for name, pid in pids.items()}
    core0, load0, wall0 = core_busy_s(system.server_cpu), children_cpu_s(), time.monotonic()
    run = tool.run(in_flight, seconds)
    wall = time.monotonic() - wall0
    core1, load1 = core_busy_s(system.server_cpu), children_cpu_s()
    spent = {name: proc_cpu_s(pid) - before[name] for name, pid in pids.items()}
    server_s = sum(spent[name] for name in counted)
    per_req = 1e6 / max(run.requests, 1)
    return Row(
        path=path,
        in_flight=in_flight,
        rps=run.requests / run.duration_s,
        p50_ms=run.p50_us / 1000,
        p99_ms=run.p99_us / 1000,
        cpu_us_per_req=server_s * per_req,
        backend_us_per_req=spent["auth"] * per_req,
        gateway_us_per_req=spent["gateway"] * per_req if path == "edge" else 0.0,
        server_util=server_s / wall,
        loadgen_util=(load1 - load0) / wall,
        other_load=max(0.0, (core1 - core0 - sum(spent.values())) / wall),
        requests=run.requests,
        pinned=all(all_threads_pinned(pid, system.server_cpu) for pid in pids.values()),
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| path | in flight | rps | p50 ms | p99 ms | server CPU µs/req (backend + gateway) "
        "| server util | load-gen util | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        split = f" ({r.backend_us_per_req:.0f} + {r.gateway_us_per_req:.0f})" if r.path == "edge" else ""
        lines.append(
            f"| {r.path} | {r.in_flight} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.cpu_us_per_req:.0f}{split} | {r.server_util:.0%} | {r.loadgen_util:.0%} "
            f"| {r.other_load:.0%} |"
        )
    return "\n".join(lines)


def summary(rows: dict[tuple[str, int], Row], concurrency: int) -> dict[str, float]:
    direct, edge = rows["direct", concurrency], rows["edge", concurrency]
    return {
        "efficiency": edge.rps / direct.rps,
        "efficiency_by_cpu": direct.cpu_us_per_req / edge.cpu_us_per_req,
        "gateway_vs_backend_cpu": edge.gateway_us_per_req / edge.backend_us_per_req,
        "low_load_added_p50_ms": rows["edge", 1].p50_ms - rows["direct", 1].p50_ms,
    }


def grpc_client_floor_us(system: System, load_cpu: int, opts: Options) -> float:
    """CPU per call a grpc.aio client spends on its own: what the gateway's gRPC side cannot go under."""
    tool = PythonGrpcLoad(f"localhost:{system.auth_port}", load_cpu, system.environ, connections=1)
    tool.run(opts.concurrency, opts.warmup)
    run = tool.run(opts.concurrency, opts.seconds)
    return 1e6 * run.client_cpu_s / max(run.requests, 1)


@dataclass(frozen=True)
class Options:
    seconds: float
    warmup: float
    concurrency: int


def run(opts: Options) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("need at least 2 CPUs: the servers and the load generator each get their own", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("need wrk and taskset: sudo apt-get install -y wrk nghttp2-client util-linux", file=sys.stderr)
        return 2
    server_cpu, load_cpu = cpus[0], cpus[1]
    os.sched_setaffinity(0, {load_cpu})  # keep the orchestrator off the servers' core
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with running_system(tmp / "home", server_cpu) as system:
            reply_bytes = check_paths(system)
            direct_tool: Any
            try:
                if shutil.which("h2load") is None or shutil.which("cc") is None:
                    raise BenchError("h2load or cc not installed")
                direct_tool = H2load(
                    f"https://127.0.0.1:{system.auth_port}{GRPC_PATH}",
                    tmp,
                    load_cpu,
                    system.settings("cli"),
                    reply_bytes,
                )
                direct_tool.run(1, 1)  # proves the client certificate is accepted
            except BenchError as why:
                print(
                    f"h2load cannot be used ({str(why)[:200]}); falling back to a grpc.aio client", flush=True
                )
                direct_tool = PythonGrpcLoad(f"localhost:{system.auth_port}", load_cpu, system.environ)
            edge_tool = Wrk(f"http://127.0.0.1:{system.gateway_port}{HTTP_PATH}", tmp, load_cpu)
            print(
                f"servers (auth, gateway) on CPU {server_cpu}; load generators on CPU {load_cpu}: "
                f"direct {direct_tool.name}, edge {edge_tool.name}; {opts.seconds:g} s windows after "
                f"{opts.warmup:g} s warm-up",
                flush=True,
            )
            rows: dict[tuple[str, int], Row] = {}
            for in_flight in (opts.concurrency, 1):
                for path, tool in (("direct", direct_tool), ("edge", edge_tool)):
                    row = rows[path, in_flight] = measure(
                        system, path, tool, in_flight, opts.seconds, opts.warmup
                    )
                    print(
                        f"  {path} x{in_flight}: {row.rps:,.0f} rps, {row.cpu_us_per_req:.0f} µs/req",
                        flush=True,
                    )
            floor_us = grpc_client_floor_us(system, load_cpu, opts)
            print(f"  bare grpc.aio client x{opts.concurrency}: {floor_us:.0f} µs/req", flush=True)
    ordered = [rows[key] for key in sorted(rows, key=lambda k: (-k[1], k[0]))]
    found = summary(rows, opts.concurrency)
    edge_row = rows["edge", opts.concurrency]
    found["grpc_client_floor_us"] = floor_us
    found["grpc_client_floor_vs_backend_cpu"] = floor_us / edge_row.backend_us_per_req
    found["gateway_above_floor_us"] = edge_row.gateway_us_per_req - floor_us
    print(f"\n## {SERVICE}.GetJwks: direct mTLS gRPC vs through the HTTP/JSON edge\n")
    print(table(ordered))
    print(
        f"\nEdge efficiency (rps through the edge / rps direct, {opts.concurrency} in flight): "
        f"**{found['efficiency']:.2f}** (by server CPU per request: {found['efficiency_by_cpu']:.2f}; "
        f"goal ≥ {PROBE['goal_efficiency']:.2f}, straightforward-edge probe {PROBE['efficiency']:.2f}). "
        f"The gateway spends {found['gateway_vs_backend_cpu']:.2f}x the backend's CPU per call "
        f"(goal ≤ 0.25). "
        f"At 1 in flight the edge adds {found['low_load_added_p50_ms']:.2f} ms p50 (goal < 1 ms). "
        f"All server threads pinned: {'yes' if all(r.pinned for r in ordered) else 'NO'}."
    )
    print(
        f"\nThe gRPC client's floor: a bare grpc.aio client (one channel, as the gateway has) spends "
        f"{floor_us:.0f} µs of CPU per call of its own, {found['grpc_client_floor_vs_backend_cpu']:.2f}x "
        f"the backend's; the gateway's work above that floor (HTTP, routing, JSON, headers) is "
        f"{found['gateway_above_floor_us']:.0f} µs per call."
    )
    elapsed = time.monotonic() - began
    print(f"\n(wall time {elapsed:.0f} s; JSON in {RESULTS_PATH})")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(
        json.dumps(
            {
                "generated_at": datetime.now().astimezone().isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "grpcio": grpc.__version__,
                },
                "options": asdict(opts),
                "load_generators": {"direct": direct_tool.name, "edge": edge_tool.name},
                "probe": PROBE,
                "rows": [asdict(r) for r in ordered],
                "summary": found,
                "wall_s": elapsed,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "_grpcload":
        print(json.dumps(asyncio.run(_grpc_load(json.loads(argv[1])))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window per row")
    parser.add_argument("--quick", action="store_true", help="2 s windows: a smoke run")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight at load")
    args = parser.parse_args(argv)
    if args.seconds < 1 or not 4 <= args.concurrency <= 1024 or args.concurrency % H2_CONNECTIONS:
        parser.error(f"need --seconds >= 1 and --concurrency a multiple of {H2_CONNECTIONS} in 4..1024")
    seconds = 2.0 if args.quick else args.seconds
    opts = Options(seconds=seconds, warmup=1.0 if args.quick else 2.0, concurrency=args.concurrency)
    return run_to_the_end(run, opts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
