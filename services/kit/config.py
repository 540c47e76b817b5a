"""Settings from ``POLY_*`` environment variables: the only module that reads the environment.

`load(service)` builds one frozen `Settings` at start-up; each component then gets only its
slice (`settings.db`, `settings.tls`, ...). Every problem is collected first, so a bad
environment fails start-up once with every wrong name listed. The README's configuration
table documents each variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import poly
from services.kit.telemetry_settings import DEFAULT_METRICS_PORTS, TelemetrySettings, read_telemetry
from services.kit.types import Environ

__all__ = [
    "AuthSettings",
    "BusSettings",
    "ConfigError",
    "COMPONENTS",
    "DEFAULT_METRICS_PORTS",
    "DEFAULT_PORTS",
    "SERVICES",
    "Backend",
    "DatabaseSettings",
    "EdgeLimits",
    "GatewaySettings",
    "NotificationsSettings",
    "PaymentsSettings",
    "ServerSettings",
    "Settings",
    "SmtpSettings",
    "TelemetrySettings",
    "TlsSettings",
    "load",
    "load_or_exit",
    "redact_url",
]

SERVICES: tuple[str, ...] = ("auth", "users", "orders", "payments", "notifications")
"""The domain services, in start-up order."""

COMPONENTS: tuple[str, ...] = (*SERVICES, "gateway", "cli")
"""Everything that gets a certificate: the services, the edge and the operator CLI."""

DEFAULT_PORTS: Mapping[str, int] = {
    "auth": 50051,
    "users": 50052,
    "orders": 50053,
    "payments": 50054,
    "notifications": 50055,
    "gateway": 8080,
}

_T = TypeVar("_T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """The environment is unusable; `problems` lists every wrong or missing variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db`` for logs and reprs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, has_password, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if has_password else ''}@{host}"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_file: Path
    cert_file: Path
    key_file: Path
    trust_domain: str = "poly.local"
    namespace: str = "default"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    workers: int = 1200
    """Most application calls handled at once (a watch stream holds one while open); more are
    refused at once with RESOURCE_EXHAUSTED (SERVER_BUSY). The pool has a few spare threads
    beyond it for health checks and those refusals."""
    grace_seconds: float = 10.0
    health_port: int = 0
    """A plaintext port answering only the health protocol's Check, for probes that cannot
    present a client certificate (Kubernetes' grpc probes); 0: none."""


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str = field(repr=False)
    migrate_on_start: bool = True

    def __repr__(self) -> str:
        return f"DatabaseSettings(url={redact_url(self.url)!r}, migrate_on_start={self.migrate_on_start})"


@dataclass(frozen=True, slots=True)
class BusSettings:
    url: str = field(default="", repr=False)
    """Empty: the embedded transport (gRPC push, no broker). ``amqp://…``: RabbitMQ."""
    prefix: str = "poly"
    """Names of the broker's exchanges and queues start with it."""
    max_attempts: int = 8
    """Delivery attempts before an event is dead-lettered (`poly bus redrive` retries it)."""
    batch_size: int = 100
    """Deliveries the relay claims per round."""
    lease_seconds: float = 30.0
    """How long a relay's claim on a delivery lasts; a relay that dies frees it after this."""
    subscribe_wait_seconds: float = 10.0
    """RabbitMQ only: at start, how long to wait until this service consumes its queue before
    saying SERVING anyway (the connection is retried in the background). The embedded
    transport waits for nothing: its routes come from the contract. The name predates that."""

    def __repr__(self) -> str:
        transport = redact_url(self.url) if self.url else "embedded"
        return (
            f"BusSettings(transport={transport!r}, prefix={self.prefix!r}, max_attempts={self.max_attempts}, "
            f"batch_size={self.batch_size})"
        )


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Tokens: what the auth service issues and what every service accepts."""

    issuer: str = "http://localhost:8080"
    """The ``iss`` of every access token, and the base URL of the OIDC discovery document."""
    audience: str = "poly"
    """The ``aud`` every access token carries and every service requires."""
    access_token_seconds: int = 900
    refresh_token_seconds: int = 30 * 24 * 3600
    leeway_seconds: float = 30.0
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""
    jwks_max_age_seconds: float = 300.0
    """How long a service trusts its cached key set before fetching it again."""
    jwks_min_refresh_seconds: float = 10.0
    """At most one fetch per this interval for tokens naming an unknown ``kid``."""
    key_encryption_key_file: Path = Path(".poly/secrets/signing-key-encryption.key")
    """Auth service only: the 32-byte key (base64url) that encrypts signing keys at rest."""
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4
    argon2_memory_budget_kib: int = 262144
    """Memory the auth service may spend on argon2 at once: it runs at most
    ``argon2_memory_budget_kib // argon2_memory_kib`` hashes or verifications concurrently."""
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_window_seconds: float = 900.0
    """Failed logins counted per account and per client address within this window."""
    registrations_per_address: int = 20
    """Registrations (taken emails included) allowed per client address within the login window."""


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """Where the notifications service sends email."""

    host: str = "localhost"
    port: int = 1025
    security: str = "none"
    """``none`` (plain SMTP), ``starttls`` (upgrade after connecting) or ``tls`` (implicit TLS)."""
    username: str = ""
    password: str = field(default="", repr=False)
    sender: str = "Polyservice <no-reply@poly.local>"
    timeout_seconds: float = 10.0
    ca_file: Path | None = None
    """CA bundle that verifies the SMTP server's certificate; None means the system store."""


@dataclass(frozen=True, slots=True)
class NotificationsSettings:
    """How notifications are delivered and retried."""

    smtp: SmtpSettings = SmtpSettings()
    max_attempts: int = 8
    retry_base_seconds: float = 2.0
    """Delay before the second attempt; it doubles per attempt (with jitter) up to the maximum."""
    retry_max_seconds: float = 600.0
    webhook_timeout_seconds: float = 5.0
    webhook_allow_private: bool = False
    """Allow webhook URLs on loopback and private networks, and plain http (development only:
    otherwise any user could make the service call internal addresses)."""
    concurrency: int = 32
    """Deliveries in flight at once."""


@dataclass(frozen=True, slots=True)
class PaymentsSettings:
    default_currency: str = "EUR"
    """Currency of the account opened for each new user."""


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


def _default_descriptor_set() -> Path:
    # `make gen` writes it into the generated package, so installs carry it along.
    return Path(poly.__file__).with_name("descriptors.binpb")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
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


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """The HTTP/JSON edge: what it routes, where to, and the limits it enforces."""

    descriptor_set: Path
    """A FileDescriptorSet (``--include_imports --include_source_info``) holding the services."""
    backends: Mapping[str, Backend]
    """Full service name -> backend; only these services are routed."""
    limits: EdgeLimits = EdgeLimits()
    client_spans: bool = False
    """Each backend call gets a CLIENT span of its own under the request's span."""
    public_endpoint: bool = False
    """A client's ``traceparent`` is only linked from a new trace, never continued, unless it
    comes from one of ``limits.trusted_proxies``."""


@dataclass(frozen=True, slots=True)
class Settings:
    service: str
    home: Path
    log_level: str
    server: ServerSettings
    tls: TlsSettings
    db: DatabaseSettings
    peers: Mapping[str, str]
    """Address each other component is dialled at, e.g. ``{"orders": "localhost:50053"}``."""
    client_deadline_seconds: float = 5.0
    bus: BusSettings = BusSettings()
    auth: AuthSettings = AuthSettings()
    notifications: NotificationsSettings = NotificationsSettings()
    payments: PaymentsSettings = PaymentsSettings()
    gateway: GatewaySettings | None = None
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)


class _Reader:
    """Reads typed values from the environment, collecting every problem instead of raising."""

    def __init__(self, environ: Environ) -> None:
        self._environ = environ
        self.problems: list[str] = []

    def text(self, name: str, default: str) -> str:
        value = self._environ.get(name, default).strip()
        if not value:
            self.problems.append(f"{name}: must not be empty")
        return value

    def optional(self, name: str) -> str:
        """The value, or "" when unset: for settings whose absence picks a mode."""
        return self._environ.get(name, "").strip()

    def secret(self, name: str, default: str = "") -> str:
        """A value that carries a credential: `name`, or the content of the file `name`_FILE
        names (a mounted secret, kept out of the environment), never both. A problem never
        shows the value."""
        file_variable = f"{name}_FILE"
        path = self._environ.get(file_variable, "").strip()
        if not path:
            return self._environ.get(name, default).strip()
        if self._environ.get(name, "").strip():
            self.problems.append(f"{name} and {file_variable}: set one of them, not both")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or type(error).__name__
            self.problems.append(f"{file_variable}: cannot read {path} ({reason})")
            return default
        if not value:
            self.problems.append(f"{file_variable}: {path} is empty")
        return value

    def _parsed(self, name: str, default: _T, parse: Callable[[str], _T], expected: str) -> _T:
        raw = self._environ.get(name)
        if raw is None:
            return default
        try:
            return parse(raw.strip())
        except ValueError:
            self.problems.append(f"{name}: expected {expected}, got {raw!r}")
            return default

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self._parsed(name, default, int, "an integer")
        if not low <= value <= high:
            self.problems.append(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: float, *, low: float, high: float) -> float:
        value = self._parsed(name, default, float, "a number")
        if not low <= value <= high:
            self.problems.append(f"{name}: must be between {low} and {high}, got {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(raw)

        return self._parsed(name, default, parse, "true or false")


def _is_broker_url(url: str) -> bool:
    """An AMQP URL a client can dial: the scheme, a host, and a port if one is given."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or 0 < parts.port < 65536  # .port raises on junk
    except ValueError:
        return False
    return parts.scheme in {"amqp", "amqps"} and bool(parts.hostname) and port_ok


def load(service: str, environ: Environ | None = None) -> Settings:
    """Build the settings of `service` (a name from `COMPONENTS`) from the environment."""
    env = _Reader(os.environ if environ is None else environ)
    if service not in COMPONENTS:
        env.problems.append(f"service: unknown component {service!r}; expected one of {COMPONENTS}")
    upper = service.upper()
    home = Path(env.text("POLY_HOME", ".poly")).absolute()
    tls_dir = Path(env.text("POLY_TLS_DIR", str(home / "certs")))
    log_level = env.text("POLY_LOG_LEVEL", "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        env.problems.append(f"POLY_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    ports = {
        name: env.integer(f"POLY_{name.upper()}_PORT", default, low=0, high=65535)
        for name, default in DEFAULT_PORTS.items()
    }
    peers = {
        name: env.text(f"POLY_{name.upper()}_ADDRESS", f"localhost:{port}") for name, port in ports.items()
    }
    settings = Settings(
        service=service,
        home=home,
        log_level=log_level,
        server=ServerSettings(
            host=env.text("POLY_LISTEN_HOST", "127.0.0.1"),
            port=ports.get(service, 0),
            workers=env.integer("POLY_GRPC_WORKERS", 1200, low=4, high=20000),
            grace_seconds=env.number("POLY_GRACE_SECONDS", 10.0, low=0.0, high=600.0),
            health_port=env.integer(f"POLY_{upper}_HEALTH_PORT", 0, low=0, high=65535),
        ),
        tls=TlsSettings(
            ca_file=Path(env.text("POLY_TLS_CA_FILE", str(tls_dir / "ca.crt"))),
            cert_file=Path(env.text("POLY_TLS_CERT_FILE", str(tls_dir / f"{service}.crt"))),
            key_file=Path(env.text("POLY_TLS_KEY_FILE", str(tls_dir / f"{service}.key"))),
            trust_domain=env.text("POLY_TRUST_DOMAIN", "poly.local"),
            namespace=env.text("POLY_NAMESPACE", "default"),
        ),
        db=DatabaseSettings(
            url=env.secret(f"POLY_{upper}_DATABASE_URL", f"sqlite:///{home / 'data' / f'{service}.db'}"),
            migrate_on_start=env.flag("POLY_DB_MIGRATE", True),
        ),
        peers=peers,
        client_deadline_seconds=env.number("POLY_CLIENT_DEADLINE_SECONDS", 5.0, low=0.01, high=3600.0),
        bus=BusSettings(
            url=env.secret("POLY_BUS_URL"),
            prefix=env.text("POLY_BUS_PREFIX", "poly"),
            max_attempts=env.integer("POLY_BUS_MAX_ATTEMPTS", 8, low=1, high=1000),
            batch_size=env.integer("POLY_BUS_BATCH_SIZE", 100, low=1, high=10000),
            lease_seconds=env.number("POLY_BUS_LEASE_SECONDS", 30.0, low=0.5, high=3600.0),
            subscribe_wait_seconds=env.number("POLY_BUS_SUBSCRIBE_WAIT_SECONDS", 10.0, low=0.0, high=600.0),
        ),
        auth=AuthSettings(
            # The public edge: where poly up's gateway listens, unless a deployment says otherwise.
            issuer=env.text("POLY_AUTH_ISSUER", f"http://localhost:{ports['gateway']}").rstrip("/"),
            audience=env.text("POLY_AUTH_AUDIENCE", "poly"),
            access_token_seconds=env.integer("POLY_AUTH_ACCESS_TOKEN_SECONDS", 900, low=30, high=86400),
            refresh_token_seconds=env.integer(
                "POLY_AUTH_REFRESH_TOKEN_SECONDS", 30 * 24 * 3600, low=60, high=365 * 24 * 3600
            ),
            leeway_seconds=env.number("POLY_AUTH_LEEWAY_SECONDS", 30.0, low=0.0, high=300.0),
            jwks_max_age_seconds=env.number("POLY_AUTH_JWKS_MAX_AGE_SECONDS", 300.0, low=0.1, high=86400.0),
            jwks_min_refresh_seconds=env.number(
                "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS", 10.0, low=0.0, high=3600.0
            ),
            key_encryption_key_file=Path(
                env.text(
                    "POLY_AUTH_KEY_ENCRYPTION_KEY_FILE", str(home / "secrets" / "signing-key-encryption.key")
                )
            ),
            argon2_time_cost=env.integer("POLY_AUTH_ARGON2_TIME_COST", 3, low=1, high=100),
            argon2_memory_kib=env.integer(
                "POLY_AUTH_ARGON2_MEMORY_KIB", 65536, low=1024, high=4 * 1024 * 1024
            ),
            argon2_parallelism=env.integer("POLY_AUTH_ARGON2_PARALLELISM", 4, low=1, high=64),
            argon2_memory_budget_kib=env.integer(
                "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB", 262144, low=1024, high=256 * 1024 * 1024
            ),
            login_failures_per_account=env.integer(
                "POLY_AUTH_LOGIN_FAILURES_PER_ACCOUNT", 5, low=1, high=1000
            ),
            login_failures_per_address=env.integer(
                "POLY_AUTH_LOGIN_FAILURES_PER_ADDRESS", 20, low=1, high=100000
            ),
            login_window_seconds=env.number("POLY_AUTH_LOGIN_WINDOW_SECONDS", 900.0, low=1.0, high=86400.0),
            registrations_per_address=env.integer(
                "POLY_AUTH_REGISTRATIONS_PER_ADDRESS", 20, low=1, high=1_000_000
            ),
        ),
        notifications=NotificationsSettings(
            smtp=SmtpSettings(
                host=env.text("POLY_SMTP_HOST", "localhost"),
                port=env.integer("POLY_SMTP_PORT", 1025, low=1, high=65535),
                security=env.text("POLY_SMTP_SECURITY", "none").lower(),
                username=env.secret("POLY_SMTP_USERNAME"),
                password=env.secret("POLY_SMTP_PASSWORD"),
                sender=env.text("POLY_SMTP_FROM", "Polyservice <no-reply@poly.local>"),
                timeout_seconds=env.number("POLY_SMTP_TIMEOUT_SECONDS", 10.0, low=0.1, high=300.0),
                ca_file=Path(ca) if (ca := env.optional("POLY_SMTP_CA_FILE")) else None,
            ),
            max_attempts=env.integer("POLY_NOTIFICATIONS_MAX_ATTEMPTS", 8, low=1, high=100),
            retry_base_seconds=env.number(
                "POLY_NOTIFICATIONS_RETRY_BASE_SECONDS", 2.0, low=0.01, high=3600.0
            ),
            retry_max_seconds=env.number(
                "POLY_NOTIFICATIONS_RETRY_MAX_SECONDS", 600.0, low=0.01, high=86400.0
            ),
            webhook_timeout_seconds=env.number("POLY_WEBHOOK_TIMEOUT_SECONDS", 5.0, low=0.1, high=120.0),
            webhook_allow_private=env.flag("POLY_WEBHOOK_ALLOW_PRIVATE", False),
            concurrency=env.integer("POLY_NOTIFICATIONS_CONCURRENCY", 32, low=1, high=1000),
        ),
        payments=PaymentsSettings(
            default_currency=env.text("POLY_PAYMENTS_DEFAULT_CURRENCY", "EUR").upper(),
        ),
        gateway=_gateway_settings(env, peers) if service == "gateway" else None,
        telemetry=read_telemetry(env, service, home, DEFAULT_METRICS_PORTS.get(service, 0)),
    )
    smtp = settings.notifications.smtp
    if smtp.security not in ("none", "starttls", "tls"):
        env.problems.append(f"POLY_SMTP_SECURITY: expected none, starttls or tls, got {smtp.security!r}")
    if bool(smtp.username) != bool(smtp.password):
        env.problems.append("POLY_SMTP_USERNAME and POLY_SMTP_PASSWORD: set both or neither")
    currency = settings.payments.default_currency
    if not re.fullmatch(r"[A-Z]{3}", currency):
        env.problems.append(f"POLY_PAYMENTS_DEFAULT_CURRENCY: expected an ISO 4217 code, got {currency!r}")
    if settings.bus.url and not _is_broker_url(settings.bus.url):
        env.problems.append(
            "POLY_BUS_URL: expected amqp://[user:password@]host[:port][/vhost] (or amqps://), "
            f"got {redact_url(settings.bus.url)!r}"
        )
    if not settings.auth.issuer.startswith(("https://", "http://")):
        env.problems.append(f"POLY_AUTH_ISSUER: expected an http(s) URL, got {settings.auth.issuer!r}")
    if settings.auth.argon2_memory_budget_kib < settings.auth.argon2_memory_kib:
        env.problems.append(
            "POLY_AUTH_ARGON2_MEMORY_BUDGET_KIB: must be at least POLY_AUTH_ARGON2_MEMORY_KIB "
            f"({settings.auth.argon2_memory_kib}), got {settings.auth.argon2_memory_budget_kib}"
        )
    if service in SERVICES and not _is_database_url(settings.db.url):  # the others open no database
        env.problems.append(f"POLY_{upper}_DATABASE_URL: not a database URL: {redact_url(settings.db.url)!r}")
    if env.problems:
        raise ConfigError(env.problems)
    return settings


def _is_database_url(url: str) -> bool:
    # SQLAlchemy takes ~0.2 s to import: only what opens a database pays for it, so the
    # settings of the CLI and the edge load without it (`poly status` answers at once).
    from sqlalchemy.engine import make_url  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        make_url(url)
    except ArgumentError:
        return False
    return True


def _backends(env: _Reader, peers: Mapping[str, str]) -> dict[str, Backend]:
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


def _gateway_settings(env: _Reader, peers: Mapping[str, str]) -> GatewaySettings:
    descriptor_set = env.optional("POLY_GATEWAY_DESCRIPTOR_SET")
    return GatewaySettings(
        descriptor_set=Path(descriptor_set) if descriptor_set else _default_descriptor_set(),
        backends=_backends(env, peers),
        limits=EdgeLimits(
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
        ),
        client_spans=env.flag("POLY_GATEWAY_CLIENT_SPANS", False),
        public_endpoint=env.flag("POLY_GATEWAY_PUBLIC_ENDPOINT", False),
    )


def _networks(env: _Reader, name: str) -> tuple[str, ...]:
    """Comma-separated CIDRs (or single addresses), each normalised (``10.0.0.1/8`` ->
    ``10.0.0.0/8``)."""
    found: list[str] = []
    for item in (i.strip() for i in env.optional(name).split(",") if i.strip()):
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            env.problems.append(f"{name}: expected IP addresses or CIDRs, got {item!r}")
    return tuple(found)


def load_or_exit(service: str) -> Settings:
    """`load`, or print every problem and exit with status 2 (for entry points)."""
    try:
        return load(service)
    except ConfigError as error:
        sys.stderr.write(f"{service}: {error}\n")
        raise SystemExit(2) from None
