"""The standalone edge's configuration from its command line and an optional TOML file
(``poly gateway [--config FILE] ...``): arguments override the file, and every problem in
either is collected into one `ConfigError`.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.config import (
    TRANSPORT_KEYS,
    ConfigError,
    EdgeConfig,
    Limits,
    Target,
    Transport,
    parse_target,
    serving_tls,
    target_from_table,
    transport_from_table,
)

__all__ = ["from_arguments"]

_SERVICE_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", re.ASCII)
_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[\w.-]*):(?P<port>\d{1,5})", re.ASCII)
_MIN_REFRESH_SECONDS = 1.0


_FILE_KEYS = {
    "listen",
    "descriptor_set",
    "reflect",
    "refresh_seconds",
    "grace_seconds",
    "title",
    "log_level",
    "metrics_listen",
    "client_spans",
    "public_endpoint",
    "tls",
    "https",
    "http2",
    "backends",
    "default_backend",
    "limits",
}


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
    parser.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM chain)")
    parser.add_argument("--tls-key", metavar="FILE", help="the serving certificate's private key")
    parser.add_argument(
        "--http2",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve HTTP/2 beside HTTP/1.1 (default: on)",
    )
    parser.add_argument("--plaintext", action="store_true", default=None, help="default transport: no TLS")
    parser.add_argument("--cacert", metavar="FILE", help="default transport: verify backends with this CA")
    parser.add_argument("--cert", metavar="FILE", help="default transport: client certificate (mTLS)")
    parser.add_argument("--key", metavar="FILE", help="default transport: its private key")
    parser.add_argument("--server-name", metavar="NAME", help="default transport: name to verify")
    parser.add_argument("--refresh-seconds", type=float, metavar="N", help="reload routes every N s")
    parser.add_argument(
        "--grace-seconds", type=float, metavar="N", help="on SIGTERM, how long requests may finish (10)"
    )
    parser.add_argument("--title", help="the OpenAPI document's title")
    parser.add_argument("--timeout-seconds", type=float, metavar="N", help="default unary deadline")
    parser.add_argument("--max-body-bytes", type=int, metavar="N")
    parser.add_argument("--max-json-depth", type=int, metavar="N")
    parser.add_argument("--rate-per-second", type=float, metavar="N", help="per client; 0 is off")
    parser.add_argument("--rate-burst", type=int, metavar="N")
    parser.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="repeatable")
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="CIDR",
        help="a proxy whose X-Forwarded-For names the client; repeatable (default: none)",
    )
    parser.add_argument(
        "--auth-failures-per-address",
        type=int,
        metavar="N",
        help="UNAUTHENTICATED answers per client in the window before 429; 0 is off",
    )
    parser.add_argument("--auth-failure-window-seconds", type=float, metavar="N")
    parser.add_argument("--ignore-query-parameter", action="append", metavar="NAME", help="repeatable")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here (plain HTTP); default: none",
    )
    parser.add_argument(
        "--client-spans",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a CLIENT span per backend call (default: the request's span stands for the call)",
    )
    parser.add_argument(
        "--public-endpoint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start a new trace per request, linking a client's traceparent instead of continuing it "
        "(a --trusted-proxy's is continued); default: continued",
    )
    return parser


def from_arguments(argv: Sequence[str]) -> EdgeConfig:
    """The configuration `argv` (and the ``--config`` file it may name) describe."""
    args = _parser().parse_args(list(argv))
    problems: list[str] = []
    file = _read_file(args.config, problems) if args.config else {}
    # Transport flags on the command line replace the file's [tls] table as a whole.
    flags = {key: getattr(args, key) for key in TRANSPORT_KEYS if getattr(args, key) is not None}
    tls_table = flags or _table(file, "tls", problems)
    unknown_tls = sorted(set(tls_table) - TRANSPORT_KEYS)
    if unknown_tls:
        problems.append(
            f"tls: unknown keys {', '.join(unknown_tls)} (use {', '.join(sorted(TRANSPORT_KEYS))})"
        )
    default_transport = (
        transport_from_table(tls_table, Transport(), problems, where="default transport") or Transport()
    )
    backends, default_backend = _backends_of(args, file, default_transport, problems)
    descriptor_set = _source_of(args, file, problems)
    host, port = _listen_of(args.listen if args.listen is not None else file.get("listen"), problems)
    metrics = args.metrics_listen if args.metrics_listen is not None else file.get("metrics_listen")
    # No metrics endpoint unless asked: several standalone edges may share a machine.
    metrics_host, metrics_port = _listen_of(metrics, problems, key="metrics_listen", default=("127.0.0.1", 0))
    limits_table = _table(file, "limits", problems)
    unknown_limits = sorted(set(limits_table) - set(Limits.__dataclass_fields__) - {"stream_ticket_seconds"})
    if "stream_ticket_seconds" in limits_table:
        # Tickets are issued only for tokens the edge checks, and a standalone edge has no key set.
        problems.append("limits.stream_ticket_seconds: a standalone edge issues no stream tickets")
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
    grace = args.grace_seconds if args.grace_seconds is not None else file.get("grace_seconds", 10.0)
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not math.isfinite(grace)
        or not 0 <= grace <= 600
    ):
        problems.append(f"grace_seconds: expected 0 to 600 seconds, got {grace!r}")
        grace = 10.0
    title = args.title or file.get("title", "API")
    if not isinstance(title, str) or not title:
        problems.append(f"title: expected a string, got {title!r}")
    log_level = str(args.log_level or file.get("log_level") or "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        problems.append(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
    https = _table(file, "https", problems)
    unknown_https = sorted(set(https) - {"cert", "key"})
    if unknown_https:
        problems.append(f"https: unknown keys {', '.join(unknown_https)} (use cert, key)")
    for key in ("cert", "key"):
        if key in https and not (isinstance(https[key], str) and https[key]):
            problems.append(f"https.{key}: expected a file name, got {https[key]!r}")
    from_file = {key: https.get(key) if isinstance(https.get(key), str) else None for key in ("cert", "key")}
    serving = serving_tls(
        args.tls_cert or from_file["cert"],
        args.tls_key or from_file["key"],
        problems,
        names=(
            "https.cert" if from_file["cert"] and not args.tls_cert else "--tls-cert",
            "https.key" if from_file["key"] and not args.tls_key else "--tls-key",
        ),
    )
    http2 = _switch(args.http2, file, "http2", problems, default=True)
    client_spans = _switch(args.client_spans, file, "client_spans", problems)
    public_endpoint = _switch(args.public_endpoint, file, "public_endpoint", problems)
    if problems:
        raise ConfigError(problems)
    return EdgeConfig(
        backends=backends,
        default_backend=default_backend,
        descriptor_set=descriptor_set,
        refresh_seconds=float(refresh),
        grace_seconds=float(grace),
        host=host,
        port=port,
        title=str(title),
        limits=limits,
        log_level=log_level,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        client_spans=client_spans,
        public_endpoint=public_endpoint,
        serving_tls=serving,
        http2=http2,
    )


def _switch(
    argument: bool | None, file: Mapping[str, Any], key: str, problems: list[str], *, default: bool = False
) -> bool:
    """An on/off setting: the flag's value when given, else the file's, else `default`."""
    value = argument if argument is not None else file.get(key, default)
    if not isinstance(value, bool):
        problems.append(f"{key}: expected true or false, got {value!r}")
        return False
    return value


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
        elif found := target_from_table(table, transport, problems, where=where):
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
        default = target_from_table(table, transport, problems, where="default_backend")
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


def _listen_of(
    listen: object,
    problems: list[str],
    *,
    key: str = "listen",
    default: tuple[str, int] = ("127.0.0.1", 8080),
) -> tuple[str, int]:
    if listen is None:
        return default
    match = _LISTEN.fullmatch(str(listen))
    if match is None or not 0 < int(match["port"]) < 65536:
        problems.append(f"{key}: expected host:port, got {listen!r}")
        return default
    return match["host"].strip("[]") or "0.0.0.0", int(match["port"])


def _limits(args: argparse.Namespace, table: Mapping[str, Any], problems: list[str]) -> Limits:
    defaults = Limits()
    numbers: dict[str, tuple[type, float, float]] = {
        "timeout_seconds": (float, 0.01, 3600.0),
        "max_body_bytes": (int, 1024, 1024**3),
        "max_json_depth": (int, 2, 1000),
        "rate_per_second": (float, 0.0, 1e6),
        "rate_burst": (int, 1, 1_000_000),
        "auth_failures_per_address": (int, 0, 1_000_000),
        "auth_failure_window_seconds": (float, 1.0, 86400.0),
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
        ("trusted_proxies", args.trusted_proxy),
    ):
        value = argument if argument is not None else table.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"limits.{name}: expected a list of strings")
        else:
            values[name] = tuple(value)
    if "trusted_proxies" in values:
        values["trusted_proxies"] = _networks(values["trusted_proxies"], problems)
    return replace(defaults, **values)


def _networks(items: Sequence[str], problems: list[str]) -> tuple[str, ...]:
    """CIDRs (or single addresses), each normalised; a problem for each that is neither."""
    found: list[str] = []
    for item in items:
        try:
            found.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            problems.append(f"limits.trusted_proxies: expected IP addresses or CIDRs, got {item!r}")
    return tuple(found)
