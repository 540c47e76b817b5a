"""Settings from ``POLY_*`` environment variables, read through one `Reader`.

`load(component)` builds the kit's frozen `Settings` at start-up (server, TLS, database, bus,
the tokens every service accepts, telemetry, where peers listen); each part of the kit gets
only its slice (`settings.db`, `settings.tls`, ...). A service's own settings live in its
folder (``services/<name>/settings.py``, the edge's in ``gateway/config.py``) and are read by
`load_with` from the same `Reader`. Every problem is collected first, so a bad environment
fails start-up once with every wrong name listed. The README's configuration table
documents each variable.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from services.kit.telemetry_settings import DEFAULT_METRICS_PORTS, TelemetrySettings, read_telemetry
from services.kit.types import Environ

__all__ = [
    "AuthSettings",
    "BusSettings",
    "ConfigError",
    "Reader",
    "COMPONENTS",
    "DEFAULT_METRICS_PORTS",
    "DEFAULT_BACKGROUND_NICE",
    "DEFAULT_NICE",
    "DEFAULT_PORTS",
    "SERVICES",
    "DatabaseSettings",
    "ExternalIssuer",
    "ServerSettings",
    "Settings",
    "TelemetrySettings",
    "TlsSettings",
    "load",
    "load_or_exit",
    "load_with",
    "load_with_or_exit",
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

DEFAULT_NICE: Mapping[str, int] = {"payments": 15, "notifications": 15}
"""The services whose share of each order no caller waits on (the capture, the email) give way
on a shared core: measured best for reads and writes there (`kit.priority`). Their own calls
(accounts, deliveries, webhooks) give way too while the cores are full."""

DEFAULT_BACKGROUND_NICE = 15
"""The threads of every service that no caller waits on (the outbox relay, saga workers) run
at this nice value (`kit.priority.BackgroundThreads`)."""

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
    nice: int = 0
    """The CPU priority the process runs at (`kit.priority`): 0 normal, up to 19 for a service
    whose work is background."""
    background_nice: int = 0
    """The CPU priority of the service's threads no caller waits on (the outbox relay, saga
    workers), when it is below the process's (`kit.priority.BackgroundThreads`)."""


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
class ExternalIssuer:
    """An outside OpenID Connect provider whose people this deployment accepts
    (``POLY_FEDERATION_*``): its keys come from its discovery document over HTTPS."""

    alias: str
    """Its name here, e.g. "keycloak": in its settings' names and on the sign-in page."""
    issuer: str
    """Its issuer URL, exactly as its tokens' ``iss`` and its discovery document name it."""
    audience: str = ""
    """The ``aud`` its access tokens must carry to be accepted by the services; empty: they
    are not accepted (people still sign in through it at the authorization endpoint)."""
    roles_claim: str = "roles"
    """Where its tokens list a person's roles: a claim, or a dotted path (realm_access.roles)."""
    roles: tuple[tuple[str, str], ...] = ()
    """``(its role, our role)`` pairs; a role not listed grants nothing here."""
    ca_file: Path | None = None
    """The CA bundle its HTTPS certificate is checked against (the system's when None)."""
    client_id: str = ""
    """This deployment's client id at the provider (signing in through it)."""
    client_secret: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Access tokens as every service accepts them (the auth service, which issues them, has
    settings of its own in ``services/auth/settings.py``)."""

    issuer: str = "http://localhost:8080"
    """The ``iss`` of every access token, and the base URL of the OIDC discovery document."""
    audience: str = "poly"
    """The ``aud`` every access token carries and every service requires."""
    leeway_seconds: float = 30.0
    """Clock skew tolerated on ``exp``, ``nbf`` and ``iat``."""
    jwks_max_age_seconds: float = 300.0
    """How long a service trusts its cached key set before fetching it again."""
    jwks_min_refresh_seconds: float = 10.0
    """At most one fetch per this interval for tokens naming an unknown ``kid``."""
    external: tuple[ExternalIssuer, ...] = ()
    """Outside identity providers whose people are accepted (`ExternalIssuer`)."""


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
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)


class Reader:
    """Reads typed values from the environment, collecting every problem instead of raising:
    the kit's settings and each service's own (its ``settings.py``) are read by one reader,
    so a bad environment is reported once, whole."""

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


_ALIAS = re.compile(r"[a-z][a-z0-9]{0,30}")
_ROLE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


def _external_issuers(env: Reader) -> tuple[ExternalIssuer, ...]:
    """``POLY_FEDERATION_ISSUERS`` (aliases, comma-separated) and, for each alias A,
    ``POLY_FEDERATION_<A>_ISSUER``, ``_AUDIENCE``, ``_ROLES_CLAIM``, ``_ROLES``
    (``theirs=ours,...``), ``_CA_FILE``, ``_CLIENT_ID`` and ``_CLIENT_SECRET`` (or its _FILE)."""
    aliases = [alias.strip() for alias in env.optional("POLY_FEDERATION_ISSUERS").split(",") if alias.strip()]
    found: list[ExternalIssuer] = []
    for alias in aliases:
        prefix = f"POLY_FEDERATION_{alias.upper()}"
        if not _ALIAS.fullmatch(alias) or aliases.count(alias) > 1:
            env.problems.append(
                f"POLY_FEDERATION_ISSUERS: {alias!r} must be a unique lower-case [a-z0-9] name"
            )
            continue
        issuer = env.optional(f"{prefix}_ISSUER")  # exactly: some (Auth0) end theirs with a slash
        parts = urlsplit(issuer)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or parts.query
            or parts.fragment
            or len(issuer) > 255
        ):
            env.problems.append(f"{prefix}_ISSUER: expected the provider's https issuer URL, got {issuer!r}")
        roles: list[tuple[str, str]] = []
        for pair in env.optional(f"{prefix}_ROLES").split(","):
            theirs, equals, ours = (part.strip() for part in pair.partition("="))
            if not pair.strip():
                continue
            if not equals or not theirs or not _ROLE.fullmatch(ours):
                env.problems.append(
                    f"{prefix}_ROLES: expected their-role=our-role pairs, got {pair.strip()!r}"
                )
                continue
            roles.append((theirs, ours))
        ca_file = env.optional(f"{prefix}_CA_FILE")
        found.append(
            ExternalIssuer(
                alias=alias,
                issuer=issuer,
                audience=env.optional(f"{prefix}_AUDIENCE"),
                roles_claim=env.text(f"{prefix}_ROLES_CLAIM", "roles"),
                roles=tuple(roles),
                ca_file=Path(ca_file) if ca_file else None,
                client_id=env.optional(f"{prefix}_CLIENT_ID"),
                client_secret=env.secret(f"{prefix}_CLIENT_SECRET"),
            )
        )
    issuers = [external.issuer for external in found]
    if len(set(issuers)) < len(issuers):
        env.problems.append("POLY_FEDERATION_ISSUERS: two aliases name the same issuer")
    return tuple(found)


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
    settings, _ = load_with(service, _nothing, environ)
    return settings


def load_with(
    service: str, read: Callable[[Reader, Settings], _T], environ: Environ | None = None
) -> tuple[Settings, _T]:
    """The kit's settings of `service` and its own, which `read` takes from the same reader
    (e.g. ``services/notifications/settings.py``'s `read`): every problem of both, together,
    in one `ConfigError`."""
    env = Reader(os.environ if environ is None else environ)
    settings = _read(env, service)
    own = read(env, settings)
    if env.problems:
        raise ConfigError(env.problems)
    return settings, own


def _nothing(env: Reader, settings: Settings) -> None:
    return None


def _read(env: Reader, service: str) -> Settings:
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
            nice=env.integer(f"POLY_{upper}_NICE", DEFAULT_NICE.get(service, 0), low=0, high=19)
            if service in SERVICES
            else 0,
            background_nice=env.integer("POLY_BACKGROUND_NICE", DEFAULT_BACKGROUND_NICE, low=0, high=19)
            if service in SERVICES
            else 0,
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
            leeway_seconds=env.number("POLY_AUTH_LEEWAY_SECONDS", 30.0, low=0.0, high=300.0),
            jwks_max_age_seconds=env.number("POLY_AUTH_JWKS_MAX_AGE_SECONDS", 300.0, low=0.1, high=86400.0),
            jwks_min_refresh_seconds=env.number(
                "POLY_AUTH_JWKS_MIN_REFRESH_SECONDS", 10.0, low=0.0, high=3600.0
            ),
            external=_external_issuers(env),
        ),
        telemetry=read_telemetry(env, service, home, DEFAULT_METRICS_PORTS.get(service, 0)),
    )
    if settings.bus.url and not _is_broker_url(settings.bus.url):
        env.problems.append(
            "POLY_BUS_URL: expected amqp://[user:password@]host[:port][/vhost] (or amqps://), "
            f"got {redact_url(settings.bus.url)!r}"
        )
    if not settings.auth.issuer.startswith(("https://", "http://")):
        env.problems.append(f"POLY_AUTH_ISSUER: expected an http(s) URL, got {settings.auth.issuer!r}")
    if any(external.issuer == settings.auth.issuer for external in settings.auth.external):
        env.problems.append("POLY_FEDERATION_ISSUERS: an outside issuer cannot be this deployment's own")
    if service in SERVICES and not _is_database_url(settings.db.url):  # the others open no database
        env.problems.append(f"POLY_{upper}_DATABASE_URL: not a database URL: {redact_url(settings.db.url)!r}")
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


def load_or_exit(service: str) -> Settings:
    """`load`, or print every problem and exit with status 2 (for entry points)."""
    settings, _ = load_with_or_exit(service, _nothing)
    return settings


def load_with_or_exit(service: str, read: Callable[[Reader, Settings], _T]) -> tuple[Settings, _T]:
    """`load_with`, or print every problem and exit with status 2 (for entry points)."""
    try:
        return load_with(service, read)
    except ConfigError as error:
        sys.stderr.write(f"{service}: {error}\n")
        raise SystemExit(2) from None
