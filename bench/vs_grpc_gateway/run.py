"""The Python edge against the Go grpc-gateway (issue 21): the same call, through each edge in
front of the same auth process, CPU per call of each gateway, in one run.

What is measured
----------------
``poly.auth.v1.AuthService/GetJwks`` (public, no token; HTTP rule ``GET /.well-known/jwks.json``)
served by one ``python -m services.auth`` with development certificates in a temporary
POLY_HOME, both at POLY_LOG_LEVEL=WARNING (``bench/edge.py``'s ``running_system``). In front of
that one auth process:

    python  ``python -m gateway`` routing only AuthService (``bench/edge.py``'s setup, telemetry
            defaults: each call traced to the span file, metrics recorded)
    go      grpc-gateway 1.6.4 (Debian 12's, built by ``build_go_gateway.py``): ``main.go``'s
            ``runtime.NewServeMux`` with a ``JSONPb{OrigName: false, EmitDefaults: true}``
            marshaler (lowerCamel names, unpopulated fields emitted, as the Python edge writes)
            and the generated ``RegisterAuthServiceHandlerFromEndpoint``, mTLS with the gateway
            component's certificate, GOMAXPROCS from its affinity (1)

and three paths are measured: ``direct`` (h2load, mTLS HTTP/2 gRPC to auth, via
``bench/edge.py``'s client-certificate shim), ``python`` and ``go`` (wrk, HTTP/1.1 keep-alive,
``GET /.well-known/jwks.json``). Auth and both gateways run under ``taskset`` on one CPU, the
load generators on the other. The gateway not in use is frozen (SIGSTOP) during a window, so
the server core has only the path's own processes on it. Each round runs every path at 32 and
at 1 in flight, each window after a warm-up, the order of the paths rotated per round.

Before measuring, both edges must answer 200 with the same set of JSON keys (and the gRPC
reply must have the same key IDs: ``bench/edge.py``'s ``check_paths``).

* rps, p50, p99         as the load generator reports them
* backend / gateway     utime+stime (``/proc/<pid>/stat``) of auth / of the path's gateway over
  CPU us per call       the window, divided by the calls completed
* Python / Go           the Python gateway's CPU per call / the Go gateway's, per round (then
                        the median over rounds), at 32 and at 1 in flight
* gateway / backend     a gateway's CPU per call / auth's in the same window
* other load            CPU time anything else took on the server core in the window

The machine is shared: only what one run measures, paths interleaved, compares; absolute
microseconds move with other load on the machine.

Usage::

    python bench/vs_grpc_gateway/build_go_gateway.py      # once: downloads and builds build/go-anchor/
    python bench/vs_grpc_gateway/run.py [--rounds 3 --seconds 5] [--no-traces]

Results are printed as markdown and written to ``bench/results/vs_grpc_gateway.json``.
``--no-traces`` sets OTEL_SDK_DISABLED=true for auth and the Python edge (no spans; the Go
edge never has any).

``--variant LABEL=SPEC`` (repeatable) adds a path ``python-LABEL``: one more Python edge in
front of the same auth, measured in the same rounds as the others, for a change measured as a
ratio in one run. SPEC is comma-separated: a directory is a checkout to run the edge from (a
``git worktree`` of another commit), ``NAME=VALUE`` an environment variable for it::

    git worktree add /tmp/edge-before HEAD~1
    python bench/vs_grpc_gateway/run.py --variant before=/tmp/edge-before \
        --variant unsampled=OTEL_TRACES_SAMPLER=always_off

Recorded run (2026-12-06, this project's 2-core machine; 3 rounds of 5 s after 2 s warm-ups)
------------------------------------------------------------------------------------------
The Python edge as the working tree had it at 10:44 (commit b8c3bdc's edge; another engineer
was editing ``gateway/jsoncodec.py`` at the time). Other load on the server core: 0% in all
18 windows. Medians over the rounds:

    path    in flight   rps   p50 ms  p99 ms  backend us/call  gateway us/call
    direct     32       927   33.24   60.89        1081              -
    python     32       529   58.91  100.33        1160            731
    go         32       810   38.87   63.67        1058            173
    direct      1       772    1.14    2.18        1259              -
    python      1       476    1.99    8.90        1263            814
    go          1       587    1.60    4.62        1427            265

    in flight  gateway CPU per call, Python / Go   Python gw / backend   Go gw / backend
    32         4.45 (rounds 4.45, 4.23, 4.99)      0.63                  0.16
    1          3.23 (rounds 3.23, 3.86, 3.07)      0.64                  0.19

Two runs right after (the jsoncodec edit saved by then). The defaults again: Python / Go 4.18
at 32 and 3.69 at 1 in flight, Python gateway / backend 0.63 and 0.63, Go 0.15 and 0.18. With
``--no-traces`` (other load 20-45% in 4 of its 18 windows): 3.22 at 32 and 2.73 at 1, Python
gateway / backend 0.56 and 0.60, Go 0.17 and 0.20; the Python gateway's 612 us per call at 32
against 731 with traces suggests (across two runs) that tracing is about a sixth of its CPU.
Absolute microseconds were 15-50% above ``bench/edge.py``'s recorded run (other load on the
shared machine): compare within a run.

Variants in one run (2026-12-06 afternoon, 2 rounds of 4 s; gateway CPU per call at 32 in
flight, then its ratio to the default edge's in the same rounds)::

    default edge                         564 us   3.60x Go
    a second default edge (control)      554 us   0.99
    OTEL_TRACES_SAMPLER=always_off       449 us   0.80
    OTEL_SDK_DISABLED=true               421 us   0.75
    Go grpc-gateway                      156 us

A throwaway probe run as a variant from a scratch directory (httptools on an asyncio.Protocol,
the same grpc.aio call and json_format, nothing else) spent 213 us, 1.54x Go and 0.41x the
default edge, in another run that day. BSP batch sizes (64 every 100 ms, 2048 every 5 s)
changed nothing (0.95 each, within the control's spread).

HTTP/2 against HTTP/1.1 (``--protocols``, 2026-12-06 21:30, 3 rounds of 4 s): the default
Python edge loaded by h2load, ``--h1`` with 32 connections against h2c with 4 connections of 8
streams; gateway CPU per call over HTTP/2 / over HTTP/1.1 1.22 at 32 in flight (1.22, 1.48,
1.15) and 1.12 at 1 (1.12, 1.42, 1.05); 1.28 and 1.35 per backend CPU. Before the edge wrote
each loop turn's frames in one write: 1.56 and 1.32.

Where the recorded span's fifth goes (one more run, checkouts each with one change, ratio to
the default edge at 32 in flight): the span file's encoding and writing skipped 0.97;
the request span without attributes 0.94; no span processor at all (spans recorded, then
dropped at their end) 0.90; not sampled 0.81. So queueing spans for the batch exporter costs
more than encoding them (the spans it holds stay alive, hundreds at a time, until their
batch goes), and the attributes about as much as the encoding and writing together.
"""

from __future__ import annotations

import argparse
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
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent, HERE):  # bench/ (edge.py, machine.py), then this folder first
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import build_go_gateway as build  # noqa: E402
import edge  # noqa: E402
import grpc  # noqa: E402
from machine import (  # noqa: E402
    BenchError,
    all_threads_pinned,
    children_cpu_s,
    core_busy_s,
    free_port,
    median,
    proc_cpu_s,
    run_to_the_end,
)

RESULTS_PATH = edge.RESULTS_PATH.parent / "vs_grpc_gateway.json"
BASE_PATHS = ("direct", "python", "go")


@dataclass(frozen=True)
class Variant:
    """Another Python edge: from `checkout` (None: this one), with `environ` added."""

    label: str
    checkout: Path | None
    environ: dict[str, str]

    @property
    def path(self) -> str:
        return f"python-{self.label}"


def parse_variant(text: str) -> Variant:
    label, _, spec = text.partition("=")
    if not label.replace("-", "").isalnum() or not spec:
        raise ValueError(f"--variant {text!r}: want LABEL=SPEC (LABEL letters, digits, dashes)")
    checkout, environ = None, {}
    for item in spec.split(","):
        name, equals, value = item.partition("=")
        if equals and name.isidentifier():
            environ[name] = value
        elif Path(item).is_dir():
            checkout = Path(item).resolve()
        else:
            raise ValueError(f"--variant {text!r}: {item!r} is neither NAME=VALUE nor a directory")
    return Variant(label, checkout, environ)


PROTOCOL_PATHS = ("python-h1", "python-h2")
"""``--protocols``: the default Python edge loaded by h2load over HTTP/1.1 and over HTTP/2."""


def gateway_of(path: str) -> str | None:
    """The process (a key of System.processes) that is the path's gateway."""
    fixed = {
        "direct": None,
        "python": "gateway",
        "go": "go-gateway",
        **dict.fromkeys(PROTOCOL_PATHS, "gateway"),
    }
    return fixed.get(path, f"gateway-{path}")


class JsonH2load:
    """h2load as an HTTP/JSON client of an edge: HTTP/2 in the clear (prior knowledge, the
    calls in flight multiplexed on ``edge.H2_CONNECTIONS`` connections, as an HTTP/2 client
    does), or with `http1` HTTP/1.1 (one call per connection at a time, no pipelining, as
    wrk and browsers do). One tool for both, so the protocol is the only difference."""

    def __init__(self, url: str, tmp: Path, load_cpu: int, *, http1: bool) -> None:
        self.url, self.load_cpu, self.http1 = url, load_cpu, http1
        self.log = tmp / f"h2load-json-{'h1' if http1 else 'h2'}.log"
        self.name = f"h2load {'--h1' if http1 else 'h2c'}"

    def run(self, in_flight: int, seconds: float) -> edge.Run:
        connections = in_flight if self.http1 else min(edge.H2_CONNECTIONS, in_flight)
        arguments = [*(["--h1"] if self.http1 else []), self.url]
        out = edge.run_h2load(
            self.load_cpu, connections, in_flight, seconds, self.log, arguments, dict(os.environ)
        )
        report = edge.h2load_report(out, self.log)
        if report.succeeded != report.run.requests or report.statuses_2xx != report.run.requests:
            raise BenchError(f"h2load: not every call answered 2xx: {out[-1500:]}")
        return report.run


# --- the Go edge -------------------------------------------------------------------------


def start_go_gateway(system: edge.System) -> int:
    """Start the Go grpc-gateway in front of the same auth process; returns its HTTP port."""
    port = free_port()
    tls = system.settings("gateway").tls
    log = (system.home / "go-gateway.log").open("wb")
    popen = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(system.server_cpu),
            str(build.BINARY),
            f"-listen=127.0.0.1:{port}",
            f"-backend=127.0.0.1:{system.auth_port}",
            "-server-name=localhost",
            f"-ca={tls.ca_file}",
            f"-cert={tls.cert_file}",
            f"-key={tls.key_file}",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith(("GO", "POLY_"))},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    system.processes["go-gateway"] = popen  # so System.stop() stops it too
    return answering(system, popen, port, "go-gateway")


def answering(system: edge.System, popen: subprocess.Popen[bytes], port: int, name: str) -> int:
    """`port`, once the edge `popen` (logging to ``<name>.log``) answers 200 there."""
    deadline = time.monotonic() + edge.STARTUP_TIMEOUT_S
    while time.monotonic() < deadline and popen.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url(port), timeout=2) as reply:
            if reply.status == 200:
                return port
        time.sleep(0.1)
    raise BenchError(f"{name} did not answer {edge.HTTP_PATH}; its output:\n{system.log(name)}")


def start_variant(system: edge.System, variant: Variant) -> int:
    """Start `variant`'s edge in front of the same auth; returns its HTTP port."""
    port = free_port()
    tree = variant.checkout or edge.ROOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLY_")}
    log = (system.home / f"{variant.path}.log").open("wb")
    popen = subprocess.Popen(
        ["taskset", "-c", str(system.server_cpu), sys.executable, "-m", "gateway"],
        cwd=tree,
        env={
            **env,
            **system.environ,
            "POLY_GATEWAY_PORT": str(port),
            "POLY_GATEWAY_METRICS_PORT": str(free_port()),  # its own scrape port, as a replica has
            "PYTHONPATH": f"{tree}:{tree / 'gen'}",
            "PYTHONUNBUFFERED": "1",
            **variant.environ,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    system.processes[f"gateway-{variant.path}"] = popen
    return answering(system, popen, port, variant.path)


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}{edge.HTTP_PATH}"


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key of a JSON value, as dotted paths (list items share ``[]``)."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{prefix}{k}", *key_paths(v, f"{prefix}{k}.")}}
    if isinstance(value, list):
        return {p for item in value for p in key_paths(item, f"{prefix}[].")}
    return set()


def check_edges(system: edge.System, ports: dict[str, int]) -> dict[str, Any]:
    """Every edge (`ports`: path -> HTTP port) answers 200 with the same JSON key set as the Go
    edge; returns what was compared."""
    reply_bytes = edge.check_paths(system)  # gRPC and the Python edge agree on the key IDs
    bodies: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    for name, port in ports.items():
        with urllib.request.urlopen(url(port), timeout=10) as reply:
            raw = reply.read()
            if reply.status != 200:
                raise BenchError(f"the {name} edge answered {reply.status}: {raw[:500]!r}")
        bodies[name], sizes[name] = json.loads(raw), len(raw)
    keys = {name: sorted(key_paths(body)) for name, body in bodies.items()}
    for name, found in keys.items():
        if found != keys["go"]:
            raise BenchError(f"the edges' JSON keys differ: {name} {found}, Go {keys['go']}")
    return {
        "keys": keys["go"],
        "same_values": bodies["python"] == bodies["go"],
        "body_bytes": sizes,
        "grpc_reply_bytes": reply_bytes,
    }


# --- measurement -------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(system: edge.System, names: list[str]) -> Iterator[None]:
    """SIGSTOP the named processes for the block (always continued after)."""
    stopped = []
    try:
        for name in names:
            os.kill(system.processes[name].pid, signal.SIGSTOP)
            stopped.append(name)
        yield
    finally:
        for name in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(system.processes[name].pid, signal.SIGCONT)


@dataclass
class Row:
    round: int
    path: str
    in_flight: int
    rps: float
    p50_ms: float
    p99_ms: float
    backend_us: float
    gateway_us: float
    server_util: float
    loadgen_util: float
    other_load: float
    requests: int
    pinned: bool


def measure(
    system: edge.System,
    paths: list[str],
    path: str,
    tool: Any,
    in_flight: int,
    seconds: float,
    warmup: float,
    round_: int,
) -> Row:
    gateway = gateway_of(path)
    idle = [g for p in paths if (g := gateway_of(p)) is not None and g != gateway]
    counted = ["auth"] + ([gateway] if gateway else [])
    pids = {name: system.processes[name].pid for name in counted}
    with frozen(system, idle):
        tool.run(in_flight, warmup)
        before = {name: proc_cpu_s(pid) for name, pid in pids.items()}
        core0, load0, wall0 = core_busy_s(system.server_cpu), children_cpu_s(), time.monotonic()
        run = tool.run(in_flight, seconds)
        wall = time.monotonic() - wall0
        core1, load1 = core_busy_s(system.server_cpu), children_cpu_s()
        spent = {name: proc_cpu_s(pid) - before[name] for name, pid in pids.items()}
    per_call = 1e6 / max(run.requests, 1)
    return Row(
        round=round_,
        path=path,
        in_flight=in_flight,
        rps=run.requests / run.duration_s,
        p50_ms=run.p50_us / 1000,
        p99_ms=run.p99_us / 1000,
        backend_us=spent["auth"] * per_call,
        gateway_us=spent[gateway] * per_call if gateway else 0.0,
        server_util=sum(spent.values()) / wall,
        loadgen_util=(load1 - load0) / wall,
        other_load=max(0.0, (core1 - core0 - sum(spent.values())) / wall),
        requests=run.requests,
        pinned=all(all_threads_pinned(pid, system.server_cpu) for pid in pids.values()),
    )


def per_backend(row: Row) -> float:
    """The row's gateway CPU per call in units of its backend's CPU per call in the same window.

    The backend does the same work on every path, so this cancels what changes the machine's
    speed between windows (other tenants, clock): on a noisy evening the backend's own CPU per
    call moved by up to 2x between windows while this ratio stayed within a few percent. It is
    the steadier figure between Python edges; against Go it flatters the Python edge a little,
    because the backend spends about 15% more per call in the Python edge's windows (a sampled
    parent to trace under, more metadata, another Python process sharing the core's caches),
    so the plain ratio stays the headline."""
    return row.gateway_us / row.backend_us


def summarize(rows: list[Row], paths: list[str], in_flights: tuple[int, ...]) -> dict[str, Any]:
    """Medians over rounds per (path, in flight), and the per-round ratios with their median."""
    per_path: dict[str, dict[str, float]] = {}
    variants = [p for p in paths if p not in BASE_PATHS]
    for in_flight in in_flights:
        for path in paths:
            mine = [r for r in rows if r.path == path and r.in_flight == in_flight]
            per_path[f"{path}@{in_flight}"] = {
                field: median([getattr(r, field) for r in mine])
                for field in ("rps", "p50_ms", "p99_ms", "backend_us", "gateway_us", "other_load")
            }
    ratios: dict[str, dict[str, Any]] = {}
    for in_flight in in_flights:
        by_round: dict[str, list[float]] = defaultdict(list)
        for round_ in sorted({r.round for r in rows}):
            got = {r.path: r for r in rows if r.round == round_ and r.in_flight == in_flight}
            by_round["python_vs_backend"].append(per_backend(got["python"]))
            by_round["go_vs_backend"].append(per_backend(got["go"]))
            protocols = [("python-h2", "python-h1")] if set(PROTOCOL_PATHS) <= set(paths) else []
            for path, against in (
                [("python", "go")]
                + [(v, "go") for v in variants]
                + [(v, "python") for v in variants]
                + protocols
            ):
                this, that = got[path], got[against]
                by_round[f"{path}_vs_{against}"].append(this.gateway_us / that.gateway_us)
                by_round[f"{path}_vs_{against}_per_backend"].append(per_backend(this) / per_backend(that))
        ratios[str(in_flight)] = {
            **{f"{k}_median": median(v) for k, v in by_round.items()},
            **{f"{k}_rounds": v for k, v in by_round.items()},
        }
    return {"paths": per_path, "ratios": ratios}


def rounds_table(rows: list[Row]) -> str:
    lines = [
        "| round | path | in flight | rps | p50 ms | p99 ms | backend µs/call | gateway µs/call "
        "| server util | load-gen util | other load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gateway = f"{r.gateway_us:.0f}" if r.path != "direct" else "-"
        lines.append(
            f"| {r.round} | {r.path} | {r.in_flight} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {r.backend_us:.0f} | {gateway} | {r.server_util:.0%} | {r.loadgen_util:.0%} "
            f"| {r.other_load:.0%} |"
        )
    return "\n".join(lines)


def summary_table(found: dict[str, Any], paths: list[str], in_flights: tuple[int, ...]) -> str:
    lines = [
        "| path | in flight | rps | p50 ms | p99 ms | backend µs/call | gateway µs/call |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for in_flight in in_flights:
        for path in paths:
            s = found["paths"][f"{path}@{in_flight}"]
            gateway = f"{s['gateway_us']:.0f}" if path != "direct" else "-"
            lines.append(
                f"| {path} | {in_flight} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} "
                f"| {s['backend_us']:.0f} | {gateway} |"
            )
    lines += [
        "",
        "| in flight | gateway CPU per call, Python / Go (median; rounds) "
        "| the same, each per its backend's CPU | Python gateway / backend | Go gateway / backend |",
        "|---:|---|---|---|---|",
    ]
    for in_flight in in_flights:
        r = found["ratios"][str(in_flight)]

        def cell(key: str, r: dict[str, Any] = r) -> str:
            rounds = ", ".join(f"{v:.2f}" for v in r[f"{key}_rounds"])
            return f"**{r[f'{key}_median']:.2f}** ({rounds})"

        keys = ("python_vs_go", "python_vs_go_per_backend", "python_vs_backend", "go_vs_backend")
        cells = " | ".join(cell(k) for k in keys)
        lines.append(f"| {in_flight} | {cells} |")
    variants = [p for p in paths if p not in BASE_PATHS]
    if variants:
        lines += [
            "",
            "| variant | in flight | gateway CPU per call ÷ Go's | ÷ the python path's "
            "| ÷ Go's, each per its backend's CPU | ÷ the python path's, the same |",
            "|---|---:|---|---|---|---|",
        ]
        for variant in variants:
            for in_flight in in_flights:
                r = found["ratios"][str(in_flight)]
                keys = ("vs_go", "vs_python", "vs_go_per_backend", "vs_python_per_backend")
                cells = " | ".join(cell(f"{variant}_{k}", r) for k in keys)
                lines.append(f"| {variant} | {in_flight} | {cells} |")
    if set(PROTOCOL_PATHS) <= set(paths):
        lines += [
            "",
            "| in flight | Python gateway CPU per call over HTTP/2 ÷ over HTTP/1.1 (both h2load) "
            "| the same, each per its backend's CPU |",
            "|---:|---|---|",
        ]
        for in_flight in in_flights:
            r = found["ratios"][str(in_flight)]
            cells = " | ".join(cell(f"python-h2_vs_python-h1{k}", r) for k in ("", "_per_backend"))
            lines.append(f"| {in_flight} | {cells} |")
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rounds: int
    seconds: float
    warmup: float
    concurrency: int
    traces: bool
    variants: tuple[Variant, ...] = ()
    protocols: bool = False


def run(opts: Options) -> int:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("need at least 2 CPUs: the servers and the load generators each get their own", file=sys.stderr)
        return 2
    missing = [tool for tool in ("wrk", "h2load", "cc", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"need {', '.join(missing)}: sudo apt-get install -y wrk nghttp2-client gcc util-linux")
        return 2
    if not build.binary_is_current():
        print(
            f"{build.BINARY} is missing or older than main.go/the protos: "
            "run bench/vs_grpc_gateway/build_go_gateway.py"
        )
        return 2
    if not opts.traces:
        os.environ["OTEL_SDK_DISABLED"] = "true"  # System.start passes the environment on
    server_cpu, load_cpu = cpus[0], cpus[1]
    os.sched_setaffinity(0, {load_cpu})  # keep the orchestrator off the servers' core
    in_flights = (opts.concurrency, 1)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vs-grpc-gateway-") as tmp_name:
        tmp = Path(tmp_name)
        with edge.running_system(tmp / "home", server_cpu) as system:
            ports = {"python": system.gateway_port, "go": start_go_gateway(system)}
            for variant in opts.variants:
                ports[variant.path] = start_variant(system, variant)
            checked = check_edges(system, ports)
            print(
                f"the edges answer 200 with the same keys ({', '.join(checked['keys'])}); same values: "
                f"{checked['same_values']}; body bytes {checked['body_bytes']}",
                flush=True,
            )
            paths = [
                *BASE_PATHS,
                *(PROTOCOL_PATHS if opts.protocols else ()),
                *(variant.path for variant in opts.variants),
            ]
            direct = edge.H2load(
                f"https://127.0.0.1:{system.auth_port}{edge.GRPC_PATH}",
                tmp,
                load_cpu,
                system.settings("cli"),
                checked["grpc_reply_bytes"],
            )
            tools = {
                "direct": direct,
                **{path: edge.Wrk(url(port), tmp, load_cpu) for path, port in ports.items()},
                "python-h1": JsonH2load(url(system.gateway_port), tmp, load_cpu, http1=True),
                "python-h2": JsonH2load(url(system.gateway_port), tmp, load_cpu, http1=False),
            }
            print(
                f"servers (auth, Python edge, Go edge) on CPU {server_cpu}, load generators on CPU "
                f"{load_cpu}; "
                f"{opts.rounds} rounds of {opts.seconds:g} s windows after {opts.warmup:g} s warm-ups",
                flush=True,
            )
            rows: list[Row] = []
            for round_ in range(1, opts.rounds + 1):
                turn = (round_ - 1) % len(paths)
                order = paths[turn:] + paths[:turn]
                for in_flight in in_flights:
                    for path in order:
                        row = measure(
                            system, paths, path, tools[path], in_flight, opts.seconds, opts.warmup, round_
                        )
                        rows.append(row)
                        print(
                            f"  round {round_} {path} x{in_flight}: {row.rps:,.0f} rps, backend "
                            f"{row.backend_us:.0f} µs/call, gateway {row.gateway_us:.0f} µs/call",
                            flush=True,
                        )
    found = summarize(rows, paths, in_flights)
    print(f"\n## {edge.SERVICE}.GetJwks: direct gRPC, the Python edge, the Go grpc-gateway 1.6.4\n")
    print(rounds_table(rows))
    print(f"\nMedians over {opts.rounds} rounds:\n")
    print(summary_table(found, paths, in_flights))
    pinned = all(r.pinned for r in rows)
    elapsed = time.monotonic() - began
    print(
        f"\nAll server threads pinned: {'yes' if pinned else 'NO'}. "
        f"(wall time {elapsed:.0f} s; JSON in {RESULTS_PATH})"
    )
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
                "go_gateway": {"binary": str(build.BINARY), "grpc_gateway": "1.6.4", "grpc_go": "1.33.3"},
                "options": {
                    **asdict(opts),
                    "variants": [asdict(v) | {"checkout": str(v.checkout)} for v in opts.variants],
                },
                "checked": checked,
                "rows": [asdict(r) for r in rows],
                "summary": found,
                "all_pinned": pinned,
                "wall_s": elapsed,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each with every path at both loads")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per path and load")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each window")
    parser.add_argument(
        "--concurrency", type=int, default=edge.CONCURRENCY, help="requests in flight at load"
    )
    parser.add_argument("--no-traces", action="store_true", help="OTEL_SDK_DISABLED=true for the Python side")
    parser.add_argument(
        "--protocols",
        action="store_true",
        help="also load the Python edge with h2load over HTTP/1.1 and over HTTP/2 (python-h1, python-h2)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=SPEC",
        help="another Python edge: SPEC is a checkout and/or NAME=VALUE variables, comma-separated",
    )
    args = parser.parse_args(argv)
    try:
        variants = tuple(parse_variant(text) for text in args.variant)
    except ValueError as error:
        parser.error(str(error))
    if not 1 <= args.rounds <= 20 or not 1 <= args.seconds <= 120 or not 1 <= args.warmup <= 60:
        parser.error("need --rounds in 1..20, --seconds in 1..120, --warmup in 1..60")
    if not 4 <= args.concurrency <= 1024 or args.concurrency % edge.H2_CONNECTIONS:
        parser.error(f"need --concurrency a multiple of {edge.H2_CONNECTIONS} in 4..1024")
    opts = Options(
        args.rounds,
        args.seconds,
        args.warmup,
        args.concurrency,
        traces=not args.no_traces,
        variants=variants,
        protocols=args.protocols,
    )
    return run_to_the_end(run, opts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
