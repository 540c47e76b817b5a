"""What the edge serves and how: from command-line arguments, a TOML file, or Polyservice's
``POLY_*`` settings. All three end as one `EdgeConfig`, served by one code path.

Every problem found is collected and reported together (`ConfigError.problems`), so a bad
deployment fails at start with the whole list, not one line per restart.

A backend target is ``host:port`` with the default transport, optionally followed by
comma-separated transport settings: ``localhost:50051,plaintext`` or
``api:443,cacert=ca.pem,cert=edge.pem,key=edge.key,server-name=api.internal``.
"""

from __future__ import annotations

import argparse
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from services.kit.config import EdgeLimits as Limits
from services.kit.config import Settings

__all__ = [
    "ConfigError",
    "EdgeConfig",
    "Limits",
    "Target",
    "Transport",
    "from_arguments",
    "from_settings",
    "parse_target",
]

TransportMode = Literal["plaintext", "tls", "mtls"]
_SERVICE_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+")
_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[\w.-]+):(?P<port>\d{1,5})")
_TRANSPORT_KEYS = frozenset({"plaintext", "cacert", "cert", "key", "server_name"})
_MIN_REFRESH_SECONDS = 1.0
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[\w.-]*):(?P<port>\d{1,5})")


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
    host: str = "127.0.0.1"
    port: int = 8080
    title: str = "API"
    """The OpenAPI document's title."""
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"

    @property
    def reflect(self) -> bool:
        return self.descriptor_set is None


def from_settings(settings: Settings) -> EdgeConfig:
    """Polyservice's own edge (`poly up`): its APIs over mTLS with the gateway's certificate,
    each backend proving the component it is."""
    gateway = settings.gateway
    if gateway is None:
        raise ConfigError(["these settings are not the gateway's"])
    tls = settings.tls

    def target(address: str, server_name: str) -> Target:
        return Target(address, Transport("mtls", tls.ca_file, tls.cert_file, tls.key_file, server_name))

    return EdgeConfig(
        backends={name: target(b.address, b.server_name) for name, b in gateway.backends.items()},
        descriptor_set=gateway.descriptor_set,
        host=settings.server.host,
        port=settings.server.port,
        title="Polyservice",
        limits=gateway.limits,
        log_level=settings.log_level,
    )


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
    return _target({"address": address, **table}, default, problems, where=where)


def _target(
    table: Mapping[str, Any], default: Transport, problems: list[str], *, where: str
) -> Target | None:
    before = len(problems)
    address = table.get("address")
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None or not 0 < int(match["port"]) < 65536:
        problems.append(f"{where}: expected an address host:port, got {address!r}")
    unknown = sorted(set(table) - {"address"} - _TRANSPORT_KEYS)
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(unknown)}")
    transport = _transport(table, default, problems, where=where)
    if transport is None or len(problems) > before:
        return None
    return Target(str(address), transport)


def _transport(
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


_FILE_KEYS = {
    "listen",
    "descriptor_set",
    "reflect",
    "refresh_seconds",
    "title",
    "log_level",
    "tls",
    "backends",
    "default_backend",
    "limits",
}


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


def _readable(path: Path, problems: list[str], *, where: str) -> Path | None:
    """`path` when its contents can be read now (grpc reads them when a channel is built)."""
    try:
        path.read_bytes()
    except OSError as error:
        problems.append(f"{where} {path} cannot be read: {error.strerror or error}")
        return None
    return path


def _table(file: Mapping[str, Any], key: str, problems: list[str]) -> dict[str, Any]:
    """The TOML table `key` of the file ({} when absent); a problem when it is not a table."""
    value = file.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a table ([{key}]), got {type(value).__name__}")
        return {}
    return value


def _read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        table = tomllib.loads(path.read_text())
    except OSError as error:
        problems.append(f"--config: cannot read {path}: {error.strerror or error}")
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        problems.append(f"--config: {path} is not valid TOML: {error}")
        return {}
    unknown = sorted(set(table) - _FILE_KEYS)
    if unknown:
        problems.append(f"{path}: unknown keys {', '.join(unknown)}")
    return table


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poly gateway",
        description="Serve an HTTP/JSON edge (google.api.http transcoding) in front of gRPC backends.",
        epilog="Targets are host:port, optionally with ,plaintext or ,cacert=F,cert=F,key=F,server-name=N. "
        "Without arguments, serves Polyservice's own APIs from the POLY_* settings.",
    )
    parser.add_argument("--config", type=Path, metavar="FILE", help="a TOML file; arguments override it")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--descriptor-set", metavar="FILE", help="routes from this FileDescriptorSet")
    source.add_argument("--reflect", action="store_true", default=None, help="routes from server reflection")
    parser.add_argument("--backend", action="append", default=[], metavar="SERVICE=TARGET", help="repeatable")
    parser.add_argument("--default-backend", metavar="TARGET", help="for every service not named")
    parser.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    parser.add_argument("--plaintext", action="store_true", default=None, help="default transport: no TLS")
    parser.add_argument("--cacert", metavar="FILE", help="default transport: verify backends with this CA")
    parser.add_argument("--cert", metavar="FILE", help="default transport: client certificate (mTLS)")
    parser.add_argument("--key", metavar="FILE", help="default transport: its private key")
    parser.add_argument("--server-name", metavar="NAME", help="default transport: name to verify")
    parser.add_argument("--refresh-seconds", type=float, metavar="N", help="reload routes every N s")
    parser.add_argument("--title", help="the OpenAPI document's title")
    parser.add_argument("--timeout-seconds", type=float, metavar="N", help="default unary deadline")
    parser.add_argument("--max-body-bytes", type=int, metavar="N")
    parser.add_argument("--max-json-depth", type=int, metavar="N")
    parser.add_argument("--rate-per-second", type=float, metavar="N", help="per client; 0 is off")
    parser.add_argument("--rate-burst", type=int, metavar="N")
    parser.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="repeatable")
    parser.add_argument("--ignore-query-parameter", action="append", metavar="NAME", help="repeatable")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def from_arguments(argv: Sequence[str]) -> EdgeConfig:
    """The configuration `argv` (and the ``--config`` file it may name) describe."""
    args = _parser().parse_args(list(argv))
    problems: list[str] = []
    file = _read_file(args.config, problems) if args.config else {}
    # Transport flags on the command line replace the file's [tls] table as a whole.
    flags = {key: getattr(args, key) for key in _TRANSPORT_KEYS if getattr(args, key) is not None}
    tls_table = flags or _table(file, "tls", problems)
    unknown_tls = sorted(set(tls_table) - _TRANSPORT_KEYS)
    if unknown_tls:
        problems.append(
            f"tls: unknown keys {', '.join(unknown_tls)} (use {', '.join(sorted(_TRANSPORT_KEYS))})"
        )
    default_transport = _transport(tls_table, Transport(), problems, where="default transport") or Transport()
    backends, default_backend = _backends_of(args, file, default_transport, problems)
    descriptor_set = _source_of(args, file, problems)
    host, port = _listen_of(args.listen if args.listen is not None else file.get("listen"), problems)
    limits_table = _table(file, "limits", problems)
    unknown_limits = sorted(set(limits_table) - set(Limits.__dataclass_fields__))
    if unknown_limits:
        problems.append(f"limits: unknown keys {', '.join(unknown_limits)}")
    limits = _limits(args, limits_table, problems)
    refresh = args.refresh_seconds if args.refresh_seconds is not None else file.get("refresh_seconds", 0.0)
    if (
        isinstance(refresh, bool)
        or not isinstance(refresh, int | float)
        or not math.isfinite(refresh)
        or (refresh != 0 and not _MIN_REFRESH_SECONDS <= refresh <= 86400)
    ):
        problems.append(f"refresh_seconds: expected 0 (SIGHUP only) or 1 to 86400 seconds, got {refresh!r}")
        refresh = 0.0
    title = args.title or file.get("title", "API")
    if not isinstance(title, str) or not title:
        problems.append(f"title: expected a string, got {title!r}")
    log_level = str(args.log_level or file.get("log_level") or "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    if problems:
        raise ConfigError(problems)
    return EdgeConfig(
        backends=backends,
        default_backend=default_backend,
        descriptor_set=descriptor_set,
        refresh_seconds=float(refresh),
        host=host,
        port=port,
        title=str(title),
        limits=limits,
        log_level=log_level,
    )


def _backends_of(
    args: argparse.Namespace, file: Mapping[str, Any], transport: Transport, problems: list[str]
) -> tuple[dict[str, Target], Target | None]:
    backends: dict[str, Target] = {}
    for service, table in _table(file, "backends", problems).items():
        where = f"backends.{service}"
        if not _SERVICE_NAME.fullmatch(service):
            problems.append(f"{where}: not a full service name (package.Service)")
        if not isinstance(table, dict):
            problems.append(f"{where}: expected a table with an address")
        elif found := _target(table, transport, problems, where=where):
            backends[service] = found
    for item in args.backend:
        service, has_target, text = item.partition("=")
        if not has_target or not _SERVICE_NAME.fullmatch(service):
            problems.append(f"--backend: expected package.Service=host:port, got {item!r}")
        elif found := parse_target(text, transport, problems, where=f"--backend {service}"):
            backends[service] = found
    default: Target | None = None
    table = file.get("default_backend")
    if args.default_backend:
        default = parse_target(args.default_backend, transport, problems, where="--default-backend")
    elif isinstance(table, dict):
        default = _target(table, transport, problems, where="default_backend")
    elif table is not None:
        problems.append("default_backend: expected a table with an address")
    if not backends and default is None and not problems:
        problems.append("no backend: name one with --backend SERVICE=TARGET or --default-backend TARGET")
    return backends, default


def _source_of(args: argparse.Namespace, file: Mapping[str, Any], problems: list[str]) -> Path | None:
    """The descriptor set file; None for reflection."""
    if args.descriptor_set:
        return Path(args.descriptor_set)
    if args.reflect:
        return None
    named, reflect = file.get("descriptor_set"), file.get("reflect", False)
    if not isinstance(reflect, bool):
        problems.append(f"reflect: expected true or false, got {reflect!r}")
        return None
    if named is not None and (not isinstance(named, str) or not named):
        problems.append(f"descriptor_set: expected a file name, got {named!r}")
        return None
    if named and reflect:
        problems.append("descriptor_set and reflect exclude each other: routes come from one source")
    elif isinstance(named, str) and named:
        return Path(named)
    elif not reflect:
        problems.append("no route source: give --descriptor-set FILE or --reflect")
    return None


def _listen_of(listen: object, problems: list[str]) -> tuple[str, int]:
    if listen is None:
        return "127.0.0.1", 8080
    match = _LISTEN.fullmatch(str(listen))
    if match is None or not 0 < int(match["port"]) < 65536:
        problems.append(f"listen: expected host:port, got {listen!r}")
        return "127.0.0.1", 8080
    return match["host"].strip("[]") or "0.0.0.0", int(match["port"])


def _limits(args: argparse.Namespace, table: Mapping[str, Any], problems: list[str]) -> Limits:
    defaults = Limits()
    numbers: dict[str, tuple[type, float, float]] = {
        "timeout_seconds": (float, 0.01, 3600.0),
        "max_body_bytes": (int, 1024, 1024**3),
        "max_json_depth": (int, 2, 1000),
        "rate_per_second": (float, 0.0, 1e6),
        "rate_burst": (int, 1, 1_000_000),
    }
    values: dict[str, Any] = {}
    for name, (kind, low, high) in numbers.items():
        value = getattr(args, name) if getattr(args, name) is not None else table.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and value != int(value))
        ):
            problems.append(
                f"limits.{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            )
        elif not low <= value <= high:
            problems.append(f"limits.{name}: must be between {low:g} and {high:g}, got {value!r}")
        else:
            values[name] = kind(value)
    for name, argument in (
        ("cors_origins", args.cors_origin),
        ("ignored_query_parameters", args.ignore_query_parameter),
    ):
        value = argument if argument is not None else table.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"limits.{name}: expected a list of strings")
        else:
            values[name] = tuple(value)
    return replace(defaults, **values)
