"""gateway.server: ``poly gateway`` as a product on its own, in front of a plain grpcio server.

The backend here is built from a descriptor set alone (generic handlers, reflection over that
set's pool), so it can be restarted with a new version of its API on the same port: version 2
adds an RPC. The gateway runs as a process with plaintext transport, so SIGHUP and exit codes
are real.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection
from prometheus_client.parser import text_string_to_metric_families

from services.kit import config, tls
from tests.gateway.conftest import STANDALONE
from tests.support.env import PYTHON, free_port, make_certs, process_environ
from tests.support.http import Answer, http_call
from tests.support.processes import Process
from tests.support.protos import compile_proto
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

SERVICE = "acme.greeter.v1.Greeter"
_V1_METHODS = """
  rpc Greet(GreetRequest) returns (Greeting) {
    option (google.api.http) = { get: "/v1/greetings/{name}" };
  }
"""
_V2_METHODS = """
  rpc Farewell(GreetRequest) returns (Greeting) {
    option (google.api.http) = { post: "/v1/farewells" body: "*" };
  }
"""
_PROTO = """
syntax = "proto3";
package acme.greeter.v1;
import "google/api/annotations.proto";
service Greeter {%s}
message GreetRequest { string name = 1; }
message Greeting { string text = 1; }
"""


def compile_api(directory: Path, version: int) -> Path:
    """The greeter API's descriptor set: version 1 greets, version 2 also says farewell."""
    text = _PROTO % (_V1_METHODS + (_V2_METHODS if version > 1 else ""))
    return compile_proto(directory / f"v{version}", "acme/greeter/v1/greeter.proto", text)


class Greeter:
    """A grpcio server for the greeter API described by `descriptor_set`."""

    def __init__(
        self,
        descriptor_set: Path,
        port: int,
        *,
        with_reflection: bool = True,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.calls = 0
        pool = descriptor_pool.DescriptorPool()
        for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
            pool.Add(file)
        service = pool.FindServiceByName(SERVICE)
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                self._answer(method.name, message_factory.GetMessageClass(method.output_type)),
                request_deserializer=message_factory.GetMessageClass(method.input_type).FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )
            for method in service.methods
        }
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if with_reflection:
            reflection.enable_server_reflection((SERVICE, reflection.SERVICE_NAME), self.server, pool=pool)
        if credentials is None:
            assert self.server.add_insecure_port(f"127.0.0.1:{port}") == port
        else:
            assert self.server.add_secure_port(f"127.0.0.1:{port}", credentials) == port
        self.server.start()

    def _answer(self, method: str, reply_class: Any) -> Callable[[Any, grpc.ServicerContext], Any]:
        word = {"Greet": "Hello", "Farewell": "Goodbye"}[method]

        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            self.calls += 1
            if request.name.startswith("slow-"):  # slow-<seconds>: a call still in flight later
                time.sleep(float(request.name.removeprefix("slow-")))
            return reply_class(text=f"{word}, {request.name}")

        return answer

    def stop(self) -> None:
        self.server.stop(grace=None).wait(10)


def gateway_args(port: int, backend_port: int, *source: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        *source,
        f"--backend={SERVICE}=127.0.0.1:{backend_port},plaintext",
        f"--listen=127.0.0.1:{port}",
        "--log-level=INFO",
        *extra,
    ]


def start_gateway(args: list[str]) -> Process:
    process = Process.module("gateway", STANDALONE, *args)
    process.wait_for_line(lambda line: '"serving"' in line, timeout=30)
    return process


@pytest.fixture
def api(tmp_path: Path) -> dict[int, Path]:
    return {1: compile_api(tmp_path, 1), 2: compile_api(tmp_path, 2)}


@pytest.fixture
def stack() -> Iterator[list[Callable[[], None]]]:
    """Things to stop at the end of a test, last first."""
    stops: list[Callable[[], None]] = []
    yield stops
    for stop in reversed(stops):
        stop()


def _farewell(port: int) -> Answer:
    return http_call(port, "POST", "/v1/farewells", {"name": "Ada"}, timeout=10)


@pytest.mark.parametrize("source", ["descriptor-set", "reflection"])
def test_sighup_picks_up_an_rpc_added_to_a_restarted_backend(
    source: str, tmp_path: Path, api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port = free_port(), free_port()
    served = tmp_path / "served.binpb"
    served.write_bytes(api[1].read_bytes())
    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    routes = ["--descriptor-set", str(served)] if source == "descriptor-set" else ["--reflect"]
    gateway = start_gateway(gateway_args(port, backend_port, *routes))
    stack.append(gateway.stop)
    assert http_call(port, "GET", "/v1/greetings/Ada").json() == {"text": "Hello, Ada"}
    assert _farewell(port).status == 404

    backend.stop()  # redeployed with version 2 of its API, on the same port
    backend = Greeter(api[2], backend_port)
    served.write_bytes(api[2].read_bytes())
    gateway.popen.send_signal(signal.SIGHUP)

    answer = eventually(lambda: (a := _farewell(port)).status == 200 and a, what="the new route")
    assert answer.json() == {"text": "Goodbye, Ada"}
    assert http_call(port, "GET", "/v1/greetings/Bo").json() == {"text": "Hello, Bo"}
    document = http_call(port, "GET", "/openapi.json").json()
    assert {"/v1/greetings/{name}", "/v1/farewells"} <= set(document["paths"])
    assert gateway.popen.poll() is None  # the same process all along


def test_the_refresh_interval_picks_up_new_rpcs_without_a_signal(
    api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port = free_port(), free_port()
    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    gateway = start_gateway(gateway_args(port, backend_port, "--reflect", extra=("--refresh-seconds=1",)))
    stack.append(gateway.stop)
    assert _farewell(port).status == 404
    backend.stop()
    backend = Greeter(api[2], backend_port)
    answer = eventually(lambda: (a := _farewell(port)).status == 200 and a, what="the refreshed routes")
    assert answer.json() == {"text": "Goodbye, Ada"}


def test_a_failed_reload_keeps_the_routes_it_had(
    api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port = free_port(), free_port()
    backend = Greeter(api[1], backend_port)
    gateway = start_gateway(gateway_args(port, backend_port, "--reflect"))
    stack.append(gateway.stop)
    backend.stop()  # reflection cannot answer now
    gateway.popen.send_signal(signal.SIGHUP)
    gateway.wait_for_line(lambda line: "reload failed" in line, timeout=30)
    answer = http_call(port, "GET", "/v1/greetings/Ada")
    assert answer.status == 503, "the route is still there; its backend is not"
    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    eventually(lambda: http_call(port, "GET", "/v1/greetings/Ada").status == 200, what="recovery")


def test_a_backend_that_goes_away_is_503_unavailable_and_recovers_by_itself(
    api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port = free_port(), free_port()
    backend = Greeter(api[1], backend_port)
    gateway = start_gateway(gateway_args(port, backend_port, "--descriptor-set", str(api[1])))
    stack.append(gateway.stop)
    assert http_call(port, "GET", "/v1/greetings/Ada").status == 200
    ready = http_call(port, "GET", "/readyz")  # no health service there: answering is ready
    assert (ready.status, ready.json()["backends"]) == (200, {SERVICE: "REACHABLE"})
    backend.stop()

    gone = http_call(port, "GET", "/v1/greetings/Ada")
    assert gone.status == 503
    assert gone.headers["Content-Type"].startswith("application/json")
    body = gone.json()
    assert body["code"] == grpc.StatusCode.UNAVAILABLE.value[0] and isinstance(body["details"], list)
    ready = http_call(port, "GET", "/readyz")
    assert ready.status == 503 and ready.json()["backends"] == {SERVICE: "UNAVAILABLE"}

    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    answer = eventually(
        lambda: (a := http_call(port, "GET", "/v1/greetings/Ada")).status == 200 and a, what="recovery"
    )
    assert answer.json() == {"text": "Hello, Ada"}


def _exits(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "gateway", *args],
        env=process_environ(STANDALONE),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-service-in-set", "not in the descriptor set: acme.nope.v1.Nope"),
        ("unreadable-set", "cannot read descriptor set"),
        ("not-a-set", "is not a FileDescriptorSet"),
        ("no-reflection", "does not serve gRPC server reflection"),
        (
            "unknown-service-reflected",
            "does not serve acme.nope.v1.Nope (it serves: acme.greeter.v1.Greeter)",
        ),
        ("unreachable", "cannot reach 127.0.0.1:"),
        ("tls-to-a-plaintext-backend", "handshake failed"),
    ],
)
def test_bad_configuration_fails_fast_with_a_clear_message(
    case: str, expected: str, tmp_path: Path, api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port = free_port()
    if case not in {"unreachable", "unreadable-set", "not-a-set"}:
        backend = Greeter(api[1], backend_port, with_reflection=case != "no-reflection")
        stack.append(backend.stop)
    service = "acme.nope.v1.Nope" if case.startswith("unknown") else SERVICE
    source = {
        "unknown-service-in-set": ["--descriptor-set", str(api[1])],
        "unreadable-set": ["--descriptor-set", str(tmp_path / "missing.binpb")],
        "not-a-set": ["--descriptor-set", str(Path(__file__))],
    }.get(case, ["--reflect"])
    transport = "" if case == "tls-to-a-plaintext-backend" else ",plaintext"
    done = _exits([*source, f"--backend={service}=127.0.0.1:{backend_port}{transport}"])
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_port_in_use_exits_1_saying_how_to_listen_elsewhere(api: dict[int, Path]) -> None:
    """Not a usage error (2): the configuration is right, the machine refuses."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _exits(
            [
                "--descriptor-set",
                str(api[1]),
                f"--backend={SERVICE}=127.0.0.1:1,plaintext",
                f"--listen=127.0.0.1:{port}",
            ]
        )
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--listen HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("transport", "status"),
    [
        (",cacert={a}/ca.crt,cert={a}/gateway.crt,key={a}/gateway.key", 200),
        (",cacert={a}/ca.crt,cert={a}/gateway.crt,key={a}/gateway.key,server-name=users", 200),
        (",cacert={a}/ca.crt,cert={a}/gateway.crt,key={a}/gateway.key,server-name=orders", 503),
        (",cacert={b}/ca.crt,cert={a}/gateway.crt,key={a}/gateway.key", 503),
        (",cacert={a}/ca.crt,cert={b}/gateway.crt,key={b}/gateway.key", 503),
        (",cacert={a}/ca.crt", 503),
        (",plaintext", 503),
    ],
    ids=[
        "mtls",
        "mtls-proving-the-name-asked-for",
        "a-certificate-for-another-name",
        "a-server-from-another-ca",
        "a-client-certificate-from-another-ca",
        "no-client-certificate",
        "plaintext-to-a-tls-backend",
    ],
)
def test_each_backend_is_held_to_its_transport(
    transport: str, status: int, tmp_path: Path, api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    """The backend requires mTLS with the first CA's certificates (its own is for `users`);
    whatever falls short never reaches it."""
    a, b = make_certs(tmp_path / "a"), make_certs(tmp_path / "b")
    server_tls = config.TlsSettings(a / "ca.crt", a / "users.crt", a / "users.key")
    backend_port, port = free_port(), free_port()
    backend = Greeter(api[1], backend_port, credentials=tls.server_credentials(server_tls))
    stack.append(backend.stop)
    target = f"localhost:{backend_port}" + transport.format(a=a, b=b)
    gateway = start_gateway(
        ["--descriptor-set", str(api[1]), f"--backend={SERVICE}={target}", f"--listen=127.0.0.1:{port}"]
    )
    stack.append(gateway.stop)
    answer = http_call(port, "GET", "/v1/greetings/Ada")
    assert answer.status == status, answer.body
    if status == 503:
        assert answer.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
        assert backend.calls == 0
    else:
        assert answer.json() == {"text": "Hello, Ada"} and backend.calls == 1


def test_a_bad_configuration_file_exits_2_listing_every_problem(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text('listen = "nowhere"\ntls = "mtls"\n[limits]\nrate_burst = 0\n')
    done = _exits(["--config", str(file)])
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("poly gateway: invalid gateway configuration:\n"), done.stderr
    for problem in [
        "listen: expected host:port",
        "tls: expected a table",
        "limits.rate_burst",
        "no route source",
    ]:
        assert problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sighup_while_the_routes_are_loading_is_not_fatal(
    api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    """Under --reflect the edge waits for a backend still starting; a SIGHUP meanwhile is a
    reload request, not the end of the process."""
    backend_port, port = free_port(), free_port()
    gateway = Process.module("gateway", STANDALONE, *gateway_args(port, backend_port, "--reflect"))
    stack.append(gateway.stop)
    gateway.wait_for_line(lambda line: '"loading routes"' in line, timeout=30)
    gateway.popen.send_signal(signal.SIGHUP)
    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    gateway.wait_for_line(lambda line: '"serving"' in line, timeout=30)
    assert http_call(port, "GET", "/v1/greetings/Ada").json() == {"text": "Hello, Ada"}


def _metric_counts(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples `name` on the ``/metrics`` endpoint at `port`, by their sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_the_standalone_edge_serves_metrics_writes_access_lines_and_keeps_spans(
    tmp_path: Path, api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port, metrics_port = free_port(), free_port(), free_port()
    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    args = gateway_args(
        port,
        backend_port,
        "--descriptor-set",
        str(api[1]),
        extra=(f"--metrics-listen=127.0.0.1:{metrics_port}",),
    )
    # No OTEL_* set: spans are kept in POLY_HOME's trace file, as under `poly up`.
    gateway = Process.module("gateway", {"POLY_HOME": str(tmp_path)}, *args)
    stack.append(gateway.stop)
    gateway.wait_for_line(lambda line: '"serving"' in line, timeout=30)
    for name in ("Ada", "Bob", "Cy"):
        answer = http_call(port, "GET", f"/v1/greetings/{name}", headers={"X-Request-Id": f"greet-{name}"})
        assert (answer.status, answer.headers["X-Request-Id"]) == (200, f"greet-{name}")
    assert http_call(port, "GET", "/v1/nowhere/Ada?token=secret-value").status == 404

    assert _metric_counts(metrics_port, "http_server_request_duration_seconds_count") == {
        (
            ("http_request_method", "GET"),
            ("http_response_status_code", "200"),
            ("http_route", "/v1/greetings/{name}"),
        ): 3,
        (("http_request_method", "GET"), ("http_response_status_code", "404"), ("http_route", "")): 1,
    }
    assert _metric_counts(metrics_port, "grpc_client_handled_total") == {
        (("grpc_code", "OK"), ("grpc_method", "Greet"), ("grpc_service", SERVICE), ("grpc_type", "unary")): 3
    }
    access = [json.loads(line) for line in gateway.lines if '"poly.access"' in line]
    assert [(a["route"], a["status"], a["request_id"][:6]) for a in access][:3] == [
        ("/v1/greetings/{name}", 200, "greet-")
    ] * 3
    assert (access[3]["route"], access[3]["status"]) == ("", 404)
    assert all(len(a["trace_id"]) == 32 and a["peer"] == "127.0.0.1" for a in access)
    assert "secret-value" not in gateway.output() and "nowhere" not in gateway.output()

    gateway.stop()  # exports what is queued on the way out
    spans = _spans_in(tmp_path / "traces" / "gateway.jsonl")
    greetings = [span for span in spans if span["name"] == "GET /v1/greetings/{name}"]
    assert len(greetings) == 3 and all(span["kind"] == _SERVER for span in greetings)
    assert [span for span in spans if span["kind"] == _CLIENT] == [], "the request's span stands for the call"
    attributes = greetings[0]["attributes"]
    for key, value in (("rpc.service", SERVICE), ("rpc.method", "Greet")):
        assert {"key": key, "value": {"stringValue": value}} in attributes, attributes
    assert access[0]["trace_id"] in {span["traceId"] for span in greetings}


_SERVER, _CLIENT = 2, 3
"""OTLP's span kinds."""
_CLIENT_TRACE, _CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


def _spans_in(path: Path) -> list[dict[str, Any]]:
    """Every span of a span file (OTLP/JSON lines)."""
    return [
        span
        for line in path.read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]


def _traced_greeting(port: int, name: str, *, source: str) -> None:
    """A greeting from `source` carrying a client's sampled traceparent; the name is its request id."""
    headers = {"traceparent": f"00-{_CLIENT_TRACE}-{_CLIENT_SPAN}-01", "X-Request-Id": name}
    answer = http_call(port, "GET", f"/v1/greetings/{name}", headers=headers, source=source)
    assert answer.status == 200, answer.body


def _server_span(spans: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    [found] = [
        span
        for span in spans
        if span["kind"] == _SERVER
        and {"key": "poly.request_id", "value": {"stringValue": request_id}} in span["attributes"]
    ]
    return found


def test_the_config_file_and_flags_make_client_spans_at_a_public_endpoint(
    tmp_path: Path, api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port = free_port(), free_port()
    stack.append(Greeter(api[1], backend_port).stop)
    file = tmp_path / "gateway.toml"
    file.write_text("public_endpoint = true\n")
    args = gateway_args(port, backend_port, "--descriptor-set", str(api[1]), extra=("--config", str(file)))
    gateway = Process.module("gateway", {"POLY_HOME": str(tmp_path)}, *args, "--client-spans")
    stack.append(gateway.stop)
    gateway.wait_for_line(lambda line: '"serving"' in line, timeout=30)
    _traced_greeting(port, "Ada", source="127.0.0.1")
    gateway.stop()  # exports what is queued on the way out

    spans = _spans_in(tmp_path / "traces" / "gateway.jsonl")
    server = _server_span(spans, "Ada")
    assert "parentSpanId" not in server and server["traceId"] != _CLIENT_TRACE, "a trace of the edge's own"
    assert [(link["traceId"], link["spanId"]) for link in server["links"]] == [(_CLIENT_TRACE, _CLIENT_SPAN)]
    [client] = [span for span in spans if span["kind"] == _CLIENT]
    assert client["name"] == f"{SERVICE}/Greet"
    assert (client["traceId"], client["parentSpanId"]) == (server["traceId"], server["spanId"])


def test_a_public_endpoint_continues_the_trace_of_its_trusted_proxies_only(
    tmp_path: Path, api: dict[int, Path], stack: list[Callable[[], None]]
) -> None:
    backend_port, port = free_port(), free_port()
    stack.append(Greeter(api[1], backend_port).stop)
    args = gateway_args(
        port,
        backend_port,
        "--descriptor-set",
        str(api[1]),
        extra=("--public-endpoint", "--trusted-proxy=127.0.0.2"),
    )
    gateway = Process.module("gateway", {"POLY_HOME": str(tmp_path)}, *args)
    stack.append(gateway.stop)
    gateway.wait_for_line(lambda line: '"serving"' in line, timeout=30)
    _traced_greeting(port, "Proxied", source="127.0.0.2")
    _traced_greeting(port, "Direct", source="127.0.0.1")
    gateway.stop()

    spans = _spans_in(tmp_path / "traces" / "gateway.jsonl")
    assert len(spans) == 2, "one span per request: no CLIENT spans unless asked"
    proxied, direct = _server_span(spans, "Proxied"), _server_span(spans, "Direct")
    assert (proxied["traceId"], proxied["parentSpanId"]) == (_CLIENT_TRACE, _CLIENT_SPAN)
    assert "links" not in proxied
    assert "parentSpanId" not in direct and direct["traceId"] != _CLIENT_TRACE
    assert [link["traceId"] for link in direct["links"]] == [_CLIENT_TRACE]


def test_metrics_listen_must_be_an_address() -> None:
    done = _exits(["--reflect", f"--backend={SERVICE}=127.0.0.1:1,plaintext", "--metrics-listen=9460"])
    assert done.returncode == 2
    assert "metrics_listen: expected host:port, got '9460'" in done.stderr


def test_a_taken_metrics_port_stops_the_start(api: dict[int, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        args = gateway_args(
            free_port(),
            free_port(),
            "--descriptor-set",
            str(api[1]),
            extra=(f"--metrics-listen=127.0.0.1:{metrics_port}",),
        )
        done = _exits(args)
    assert done.returncode == 1, done.stderr
    assert f"poly gateway: cannot serve metrics on 127.0.0.1:{metrics_port}" in done.stderr
    assert "--metrics-listen moves it" in done.stderr


@pytest.mark.parametrize(
    ("grace", "call_seconds", "answered"),
    [("5", 1.5, True), ("0.5", 4.0, False)],
    ids=["finishes-within-grace", "cut-at-grace"],
)
def test_sigterm_stops_listening_lets_requests_in_flight_finish_within_the_grace_and_exits_0(
    api: dict[int, Path], stack: list[Callable[[], None]], grace: str, call_seconds: float, answered: bool
) -> None:
    backend_port, port = free_port(), free_port()
    backend = Greeter(api[1], backend_port)
    stack.append(backend.stop)
    edge = start_gateway(
        gateway_args(port, backend_port, f"--descriptor-set={api[1]}", extra=(f"--grace-seconds={grace}",))
    )
    stack.append(edge.stop)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(http_call(port, "GET", f"/v1/greetings/slow-{call_seconds}", timeout=15).status)
        except OSError as error:  # the connection closed under it
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    eventually(lambda: backend.calls == 1, timeout=10, what="the call to reach the backend")
    signalled = time.monotonic()
    edge.signal(signal.SIGTERM)
    assert edge.wait(20) == 0, edge.output()
    stopped_after = time.monotonic() - signalled
    caller.join(20)
    with pytest.raises(OSError):  # no longer listening
        http_call(port, "GET", "/v1/greetings/late", timeout=5)
    if answered:
        assert outcome == [200], edge.output()
    else:
        assert outcome != [200] and stopped_after < call_seconds, (outcome, stopped_after)
    messages = [
        json.loads(line).get("message") for line in edge.output().splitlines() if line.startswith("{")
    ]
    assert messages.index("draining") < messages.index("stopped"), messages
