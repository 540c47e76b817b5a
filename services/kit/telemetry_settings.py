"""Telemetry settings: the standard ``OTEL_*`` variables, plus the metrics port and log format.

Read by `kit.config` through its reader (so a bad value joins the start-up problem list);
this module imports no OpenTelemetry, so the CLI stays fast. What each value does is in the
README's "Observability" section.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_METRICS_PORTS",
    "LOG_FORMATS",
    "SAMPLERS",
    "TRACES_EXPORTERS",
    "TelemetrySettings",
    "read_telemetry",
]

DEFAULT_METRICS_PORTS: Mapping[str, int] = {
    "gateway": 9460,
    "auth": 9461,
    "users": 9462,
    "orders": 9463,
    "payments": 9464,
    "notifications": 9465,
}
"""Where each component serves ``/metrics`` (plain HTTP) unless POLY_<NAME>_METRICS_PORT moves it."""

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
TRACES_EXPORTERS = ("otlp", "file", "console", "none")
LOG_FORMATS = ("json", "console")


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """The defaults (settings built by hand, in tests) record nothing and serve no metrics."""

    service_name: str = "poly"
    """OTEL_SERVICE_NAME; the component's name by default."""
    trace_file: Path = Path(".poly/traces/poly.jsonl")
    """Where the ``file`` exporter appends spans (OTLP JSON, one export per line)."""
    metrics_port: int = 0
    """POLY_<NAME>_METRICS_PORT; 0 serves no metrics endpoint."""
    metrics_host: str = "127.0.0.1"
    log_format: str = "json"
    environment: str = "development"
    """``deployment.environment`` (from OTEL_RESOURCE_ATTRIBUTES, else POLY_ENVIRONMENT)."""
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    sdk_disabled: bool = False
    traces_exporter: str = "none"
    """OTEL_TRACES_EXPORTER; by default ``otlp`` when an OTLP endpoint is set, else ``file``."""
    otlp_endpoint: str = ""
    otlp_insecure: bool = False
    otlp_certificate: Path | None = None
    otlp_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """May carry a vendor's API key: never shown."""
    otlp_timeout_seconds: float = 5.0
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_seconds: float = 1.0

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded at all (the SDK is on and something receives them)."""
        return not self.sdk_disabled and self.traces_exporter != "none"


class _Reader(Protocol):
    problems: list[str]

    def text(self, name: str, default: str) -> str: ...
    def optional(self, name: str) -> str: ...
    def integer(self, name: str, default: int, *, low: int, high: int) -> int: ...
    def number(self, name: str, default: float, *, low: float, high: float) -> float: ...
    def flag(self, name: str, default: bool) -> bool: ...


def _pairs(env: _Reader, name: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (values percent-encoded, as the OTel spec says)."""
    found: dict[str, str] = {}
    for item in (i.strip() for i in env.optional(name).split(",") if i.strip()):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            # Never echo the item: a header given as "api-key: SECRET" is a credential.
            env.problems.append(f"{name}: expected key=value pairs separated by commas (an item has no '=')")
            continue
        found[key.strip()] = unquote(value.strip())
    return found


def _endpoint(env: _Reader) -> str:
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = env.optional(name)
        if not value:
            continue
        scheme, host, port_ok = "", "", False
        try:
            parts = urlsplit(value)
            scheme, host = parts.scheme, parts.hostname or ""
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            pass
        if scheme not in ("http", "https") or not host or not port_ok:
            # Only the scheme and host are shown: the value may carry user:password@.
            shown = f"{scheme}://{host or '?'}" if scheme else "a value without a scheme"
            env.problems.append(f"{name}: expected http(s)://host:port (OTLP over gRPC), got {shown}")
            return ""
        return value
    return ""


def read_telemetry(env: _Reader, component: str, home: Path, metrics_port_default: int) -> TelemetrySettings:
    """The telemetry slice of `component`'s settings."""
    protocol = env.optional("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.optional(
        "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    if protocol and protocol != "grpc":
        env.problems.append(f"OTEL_EXPORTER_OTLP_PROTOCOL: only grpc is supported, got {protocol!r}")
    endpoint = _endpoint(env)
    exporter = (env.optional("OTEL_TRACES_EXPORTER") or ("otlp" if endpoint else "file")).lower()
    if exporter not in TRACES_EXPORTERS:
        env.problems.append(
            f"OTEL_TRACES_EXPORTER: expected one of {', '.join(TRACES_EXPORTERS)}, got {exporter!r}"
        )
    if exporter == "otlp" and not endpoint:
        endpoint = "http://localhost:4317"  # the OTel default
    sampler = (env.optional("OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        env.problems.append(f"OTEL_TRACES_SAMPLER: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    sampler_arg = env.number("OTEL_TRACES_SAMPLER_ARG", 1.0, low=0.0, high=1.0) if "ratio" in sampler else 1.0
    resource = _pairs(env, "OTEL_RESOURCE_ATTRIBUTES")
    log_format = env.text("POLY_LOG_FORMAT", "console" if sys.stderr.isatty() else "json").lower()
    if log_format not in LOG_FORMATS:
        env.problems.append(f"POLY_LOG_FORMAT: expected json or console, got {log_format!r}")
    certificate = env.optional("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") or env.optional(
        "OTEL_EXPORTER_OTLP_CERTIFICATE"
    )
    insecure_default = endpoint.startswith("http://")
    queue = env.integer("OTEL_BSP_MAX_QUEUE_SIZE", 2048, low=1, high=1_000_000)
    batch = env.integer("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, low=1, high=1_000_000)
    if batch > queue:
        env.problems.append(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE ({queue})"
        )
    return TelemetrySettings(
        service_name=env.optional("OTEL_SERVICE_NAME") or resource.pop("service.name", "") or component,
        trace_file=home / "traces" / f"{component}.jsonl",
        metrics_port=env.integer(
            f"POLY_{component.upper()}_METRICS_PORT", metrics_port_default, low=0, high=65535
        ),
        metrics_host=env.text("POLY_METRICS_HOST", "127.0.0.1"),
        log_format=log_format,
        environment=resource.pop("deployment.environment", "") or env.text("POLY_ENVIRONMENT", "development"),
        resource_attributes=resource,
        sdk_disabled=env.flag("OTEL_SDK_DISABLED", False),
        traces_exporter=exporter,
        otlp_endpoint=endpoint,
        otlp_insecure=env.flag("OTEL_EXPORTER_OTLP_INSECURE", insecure_default),
        otlp_certificate=Path(certificate) if certificate else None,
        otlp_headers=_pairs(env, "OTEL_EXPORTER_OTLP_HEADERS"),
        otlp_timeout_seconds=env.number("OTEL_EXPORTER_OTLP_TIMEOUT", 5000.0, low=1.0, high=600_000.0) / 1000,
        sampler=sampler,
        sampler_arg=sampler_arg,
        max_queue_size=queue,
        max_export_batch_size=batch,
        schedule_delay_seconds=env.number("OTEL_BSP_SCHEDULE_DELAY", 1000.0, low=1.0, high=3_600_000.0)
        / 1000,
    )
