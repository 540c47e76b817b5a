"""What the edge serves and how: `EdgeConfig`, its backend targets and their transport
security, built from Polyservice's ``POLY_*`` settings here or from arguments and a TOML file
(`gateway.arguments`). All end as one `EdgeConfig`, served by one code path.

Every problem found is collected and reported together (`ConfigError.problems`), so a bad
deployment fails at start with the whole list, not one line per restart.

A backend target is ``host:port`` with the default transport, optionally followed by
comma-separated transport settings: ``localhost:50051,plaintext`` or
``api:443,cacert=ca.pem,cert=edge.pem,key=edge.key,server-name=api.internal``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path
from typing import Any, Literal

import poly
from gateway.tls import CertificateFiles
from services.kit import config
from services.kit.config import AuthSettings, Reader, Settings
from services.kit.types import Environ

__all__ = [
    "API_SERVICES",
    "TRANSPORT_KEYS",
    "Backend",
    "GatewaySettings",
    "default_descriptor_set",
    "from_environment",
    "read_settings",
    "ConfigError",
    "EdgeConfig",
    "Limits",
    "Target",
    "TokenCheck",
    "Transport",
    "from_settings",
    "parse_target",
    "serving_tls",
    "target_from_table",
    "transport_from_table",
]

TransportMode = Literal["plaintext", "tls", "mtls"]
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(?P<port>\d{1,5})", re.ASCII)
TRANSPORT_KEYS = frozenset({"plaintext", "cacert", "cert", "key", "server_name"})
_LICENSE = "Apache-2.0"
"""pyproject.toml's ``license``, for when the package metadata cannot be read."""


class ConfigError(ValueError):
    """The configuration cannot be served; `problems` lists every reason found."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid gateway configuration:\n  - " + "\n  - ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Transport:
    """How the edge reaches a backend: plaintext, TLS (server verified against `ca_file`,
    or the system's roots without one), or mTLS (TLS plus the edge's client certificate)."""

    mode: TransportMode = "tls"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = field(default=None, repr=False)
    server_name: str = ""
    """The name the backend's certificate must prove; empty means the host dialled."""


@dataclass(frozen=True)
class Target:
    """One backend: where it listens and how to reach it."""

    address: str
    transport: Transport = Transport()


@dataclass(frozen=True, slots=True)
class Backend:
    """Where the edge sends the calls of one gRPC service."""

    address: str
    server_name: str = ""
    """The name the backend's certificate must prove (a Polyservice component name); empty
    means the host of `address`."""


API_SERVICES: Mapping[str, str] = {
    "auth": "poly.auth.v1.AuthService",
    "users": "poly.users.v1.UsersService",
    "orders": "poly.orders.v1.OrdersService",
    "payments": "poly.payments.v1.PaymentsService",
    "notifications": "poly.notifications.v1.NotificationsService",
}
"""The public API each service serves: the edge's default backends."""


def default_descriptor_set() -> Path:
    # `make gen` writes it into the generated package, so installs carry it along.
    return Path(poly.__file__).with_name("descriptors.binpb")


@dataclass(frozen=True, slots=True)
class Limits:
    """What the HTTP/JSON edge enforces per request."""

    timeout_seconds: float = 30.0
    """Deadline of a unary call when the client sends no ``Grpc-Timeout``."""
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    ignored_query_parameters: tuple[str, ...] = ("_",)
    """Query parameters dropped instead of refused (cache busters)."""
    rate_per_second: float = 0.0
    """Per principal of a token the edge verifies, else per client address (never per
    unverified token); 0 turns the limit off."""
    rate_burst: int = 50
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call from a browser; ``*`` allows any."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of proxies whose ``X-Forwarded-For`` names the client; anyone else's is ignored."""
    auth_failures_per_address: int = 100
    """Failed authentications (UNAUTHENTICATED answers, tokens the edge refuses) per client
    address within the window before that address gets 429 until the window ends; 0 turns
    this off."""
    auth_failure_window_seconds: float = 60.0
    stream_ticket_seconds: float = 30.0
    """Lifetime of a stream ticket (``POST /stream-tickets``, `gateway.tickets`); 0 turns the
    endpoint off."""


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The HTTP/JSON edge: what it routes, where to, and the limits it enforces."""

    descriptor_set: Path
    """A FileDescriptorSet (``--include_imports --include_source_info``) holding the services."""
    backends: Mapping[str, Backend]
    """Full service name -> backend; only these services are routed."""
    limits: Limits = Limits()
    client_spans: bool = False
    """Each backend call gets a CLIENT span of its own under the request's span."""
    public_endpoint: bool = False
    """A client's ``traceparent`` is only linked from a new trace, never continued, unless it
    comes from one of ``limits.trusted_proxies``."""
    serving_tls: CertificateFiles | None = None
    """HTTPS for the edge's clients with this certificate; None serves plain HTTP."""
    http2: bool = True
    """Serve HTTP/2 beside HTTP/1.1 (ALPN over TLS; prior knowledge or ``Upgrade: h2c`` in the clear)."""


@dataclass(frozen=True)
class TokenCheck:
    """Bearer tokens the edge verifies itself, only to key its rate limit on who is calling
    (the backends still verify and decide): the signing keys come from Polyservice's auth
    service at `keys_from` (its ``GetJwks``), and a token must match `auth`'s issuer,
    audience and leeway."""

    keys_from: Target
    auth: AuthSettings = field(default_factory=AuthSettings)
    timeout_seconds: float = 5.0
    """Deadline of one key-set fetch."""


@dataclass(frozen=True)
class EdgeConfig:
    """Everything `gateway.serve` needs."""

    backends: Mapping[str, Target]
    """Full service name -> its backend."""
    default_backend: Target | None = None
    """Where every other service goes; with it, every service of the descriptors is routed."""
    descriptor_set: Path | None = None
    """Routes from this FileDescriptorSet; None means from the backends' server reflection."""
    refresh_seconds: float = 0.0
    """Reload the descriptors this often (0: only on SIGHUP)."""
    grace_seconds: float = 10.0
    """On SIGTERM, how long requests in flight (streams included) may finish after the edge
    stops accepting connections."""
    host: str = "127.0.0.1"
    port: int = 8080
    title: str = "API"
    """The OpenAPI document's title."""
    openapi_license: Mapping[str, str] | None = None
    """The OpenAPI document's ``info.license``; None claims none, as a standalone edge in front of
    other people's APIs must. Polyservice's own edge states its own (`from_settings`)."""
    limits: Limits = field(default_factory=Limits)
    serving_tls: CertificateFiles | None = None
    """HTTPS for the edge's clients with this certificate (reloaded when its files change);
    None serves plain HTTP. Standalone, ``--tls-cert``/``--tls-key``; Polyservice's edge,
    ``POLY_GATEWAY_TLS_CERT``/``POLY_GATEWAY_TLS_KEY``."""
    http2: bool = True
    """Serve HTTP/2 beside HTTP/1.1."""
    tokens: TokenCheck | None = None
    """How to verify bearer tokens to limit per principal; None limits every client by address."""
    log_level: str = "INFO"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    """Where ``/metrics`` is served (plain HTTP); 0 serves none. Standalone, ``--metrics-listen``;
    Polyservice's edge, ``POLY_GATEWAY_METRICS_PORT`` (`services.kit.telemetry` serves it)."""
    client_spans: bool = False
    """Each backend call gets a CLIENT span of its own under the request's span (by default
    the request's span stands for the call)."""
    public_endpoint: bool = False
    """Clients are on the Internet: their ``traceparent`` is linked from a new trace the edge
    starts and samples itself, never continued, except from a peer in
    ``limits.trusted_proxies`` (`gateway.observe.Observer`)."""

    @property
    def reflect(self) -> bool:
        return self.descriptor_set is None


def from_environment(environ: Environ | None = None) -> tuple[Settings, EdgeConfig]:
    """Polyservice's own edge from its ``POLY_*`` environment (`from_settings`); raises
    `services.kit.config.ConfigError` listing every problem."""
    settings, gateway = config.load_with("gateway", read_settings, environ)
    return settings, from_settings(settings, gateway)


def from_settings(settings: Settings, gateway: GatewaySettings) -> EdgeConfig:
    """Polyservice's own edge (`poly up`): its APIs over mTLS with the gateway's certificate,
    each backend proving the component it is, and bearer tokens verified against the auth
    service's keys (to limit per principal)."""
    tls = settings.tls

    def target(address: str, server_name: str) -> Target:
        return Target(address, Transport("mtls", tls.ca_file, tls.cert_file, tls.key_file, server_name))

    return EdgeConfig(
        backends={name: target(b.address, b.server_name) for name, b in gateway.backends.items()},
        descriptor_set=gateway.descriptor_set,
        host=settings.server.host,
        port=settings.server.port,
        title="Polyservice",
        openapi_license=_own_license(),
        limits=gateway.limits,
        tokens=TokenCheck(
            target(settings.peers["auth"], "auth"), settings.auth, settings.client_deadline_seconds
        ),
        log_level=settings.log_level,
        metrics_host=settings.telemetry.metrics_host,
        metrics_port=settings.telemetry.metrics_port,
        client_spans=gateway.client_spans,
        public_endpoint=gateway.public_endpoint,
        grace_seconds=settings.server.grace_seconds,
        serving_tls=gateway.serving_tls,
        http2=gateway.http2,
    )


def _own_license() -> dict[str, str]:
    """Polyservice's licence as its installed metadata declares it (SPDX), else Apache-2.0."""
    try:
        declared = metadata("polyservice").get_all("License-Expression") or [_LICENSE]
    except PackageNotFoundError:  # run from a checkout that was never installed
        declared = [_LICENSE]
    return {"name": str(declared[0]), "identifier": str(declared[0])}


def parse_target(text: str, default: Transport, problems: list[str], *, where: str) -> Target | None:
    """``host:port[,plaintext|,cacert=F,cert=F,key=F,server-name=N]``; a problem is appended
    (and None returned) when it does not parse."""
    address, *settings = [part.strip() for part in text.split(",")]
    table: dict[str, Any] = {}
    for setting in settings:
        key, has_value, value = setting.partition("=")
        if key == "plaintext" and not has_value:
            table["plaintext"] = True
        elif key in {"cacert", "cert", "key", "server-name"} and has_value and value:
            table[key.replace("-", "_")] = value
        else:
            problems.append(f"{where}: unknown transport setting {setting!r} in {text!r}")
            return None
    return target_from_table({"address": address, **table}, default, problems, where=where)


def target_from_table(
    table: Mapping[str, Any], default: Transport, problems: list[str], *, where: str
) -> Target | None:
    """The target a TOML-like table (address plus transport keys) describes; problems are
    appended (and None returned) when it does not hold together."""
    before = len(problems)
    address = table.get("address")
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None or not 0 < int(match["port"]) < 65536:
        problems.append(f"{where}: expected an address host:port, got {address!r}")
    unknown = sorted(set(table) - {"address"} - TRANSPORT_KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(unknown)}")
    transport = transport_from_table(table, default, problems, where=where)
    if transport is None or len(problems) > before:
        return None
    return Target(str(address), transport)


def transport_from_table(
    table: Mapping[str, Any], default: Transport, problems: list[str], *, where: str
) -> Transport | None:
    """The transport `table` (plaintext, cacert, cert, key, server_name) describes on top of
    `default`: a table that sets plaintext or names a file replaces the default's security as
    a whole (so ``cacert`` alone means TLS without a client certificate)."""
    plaintext = table.get("plaintext", False)
    if not isinstance(plaintext, bool):
        problems.append(f"{where}: plaintext must be true or false")
        return None
    server_name = table.get("server_name", "")
    if not isinstance(server_name, str):
        problems.append(f"{where}: server_name must be a string")
        return None
    if not plaintext and not any(key in table for key in ("cacert", "cert", "key")):
        return _inherited(default, server_name, "plaintext" in table, problems, where=where)
    before = len(problems)
    files: dict[str, Path | None] = {}
    for key in ("cacert", "cert", "key"):
        value = table.get(key)
        if value is None:
            files[key] = None
        elif not isinstance(value, str) or not value:
            problems.append(f"{where}: {key} must be a file name")
        else:
            files[key] = _readable(Path(value), problems, where=f"{where}: {key} file")
    if plaintext and (any(table.get(k) for k in ("cacert", "cert", "key")) or server_name):
        problems.append(f"{where}: plaintext cannot be combined with cacert, cert, key or server_name")
    if bool(table.get("cert")) != bool(table.get("key")):
        problems.append(f"{where}: cert and key go together (mTLS needs both)")
    if len(problems) > before:
        return None
    if plaintext:
        return Transport("plaintext")
    mode: TransportMode = "mtls" if files.get("cert") else "tls"
    return Transport(mode, files.get("cacert"), files.get("cert"), files.get("key"), str(server_name))


def _inherited(
    default: Transport, server_name: str, tls_asked: bool, problems: list[str], *, where: str
) -> Transport | None:
    """A table naming no file: the default's security, with its own server name."""
    if default.mode == "plaintext" and tls_asked:  # plaintext = false over a plaintext default
        return Transport("tls", server_name=server_name)
    if default.mode == "plaintext" and server_name:
        problems.append(f"{where}: server_name needs TLS, and the transport is plaintext")
        return None
    return replace(default, server_name=server_name) if server_name else default


def serving_tls(
    cert: str | None, key: str | None, problems: list[str], *, names: tuple[str, str]
) -> CertificateFiles | None:
    """The edge's own certificate from its two settings (`names`, for problems): both or
    neither, each readable."""
    if not cert and not key:
        return None
    if not cert or not key:
        problems.append(f"{names[0]} and {names[1]}: give both (a certificate and its key) or neither")
        return None
    cert_file = _readable(Path(cert), problems, where=names[0])
    key_file = _readable(Path(key), problems, where=names[1])
    return CertificateFiles(cert_file, key_file) if cert_file and key_file else None


def _readable(path: Path, problems: list[str], *, where: str) -> Path | None:
    """`path` when its contents can be read now (grpc reads them when a channel is built)."""
    try:
        path.read_bytes()
    except OSError as error:
        problems.append(f"{where} {path} cannot be read: {error.strerror or error}")
        return None
    return path


def _backends(env: Reader, peers: Mapping[str, str]) -> dict[str, Backend]:
    text = env.optional("POLY_GATEWAY_BACKENDS")
    if not text:
        return {api: Backend(peers[name], name) for name, api in API_SERVICES.items()}
    found: dict[str, Backend] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        service, _, address = item.partition("=")
        if not re.fullmatch(r"[A-Za-z_][\w.]*\.[A-Za-z_]\w*", service, re.ASCII) or ":" not in address:
            env.problems.append(f"POLY_GATEWAY_BACKENDS: expected package.Service=host:port, got {item!r}")
            continue
        found[service] = Backend(address.strip())
    return found


def read_settings(env: Reader, settings: Settings) -> GatewaySettings:
    """The edge's own ``POLY_GATEWAY_*`` settings, read beside the kit's (`config.load_with`)."""
    peers = settings.peers
    descriptor_set = env.optional("POLY_GATEWAY_DESCRIPTOR_SET")
    return GatewaySettings(
        descriptor_set=Path(descriptor_set) if descriptor_set else default_descriptor_set(),
        backends=_backends(env, peers),
        limits=Limits(
            timeout_seconds=env.number("POLY_GATEWAY_TIMEOUT_SECONDS", 30.0, low=0.01, high=3600.0),
            max_body_bytes=env.integer("POLY_GATEWAY_MAX_BODY_BYTES", 1024 * 1024, low=1024, high=1024**3),
            max_json_depth=env.integer("POLY_GATEWAY_MAX_JSON_DEPTH", 32, low=2, high=1000),
            ignored_query_parameters=tuple(
                p.strip()
                for p in env.text("POLY_GATEWAY_IGNORED_QUERY_PARAMETERS", "_").split(",")
                if p.strip()
            ),
            rate_per_second=env.number("POLY_GATEWAY_RATE_PER_SECOND", 0.0, low=0.0, high=1e6),
            rate_burst=env.integer("POLY_GATEWAY_RATE_BURST", 50, low=1, high=1_000_000),
            cors_origins=tuple(
                o.strip() for o in env.optional("POLY_GATEWAY_CORS_ORIGINS").split(",") if o.strip()
            ),
            trusted_proxies=_networks(env, "POLY_GATEWAY_TRUSTED_PROXIES"),
            auth_failures_per_address=env.integer(
                "POLY_GATEWAY_AUTH_FAILURES_PER_ADDRESS", 100, low=0, high=1_000_000
            ),
            auth_failure_window_seconds=env.number(
                "POLY_GATEWAY_AUTH_FAILURE_WINDOW_SECONDS", 60.0, low=1.0, high=86400.0
            ),
            stream_ticket_seconds=env.number("POLY_GATEWAY_STREAM_TICKET_SECONDS", 30.0, low=0.0, high=300.0),
        ),
        client_spans=env.flag("POLY_GATEWAY_CLIENT_SPANS", False),
        public_endpoint=env.flag("POLY_GATEWAY_PUBLIC_ENDPOINT", False),
        serving_tls=serving_tls(
            env.optional("POLY_GATEWAY_TLS_CERT"),
            env.optional("POLY_GATEWAY_TLS_KEY"),
            env.problems,
            names=("POLY_GATEWAY_TLS_CERT", "POLY_GATEWAY_TLS_KEY"),
        ),
        http2=env.flag("POLY_GATEWAY_HTTP2", True),
    )


def _networks(env: Reader, name: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (or single addresses), each normalised (``10.0.0.1/8`` ->
    ``10.0.0.0/8``)."""
    found: list[str] = []
    for item in (i.strip() for i in env.optional(name).split(",") if i.strip()):
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            env.problems.append(f"{name}: expected IP addresses or CIDRs, got {item!r}")
    return tuple(found)
