"""Spans kept on local disk as OTLP/JSON lines, so `poly up` needs no collector.

Each export appends one line: an ``ExportTraceServiceRequest`` in the OTLP/JSON encoding
(lowerCamelCase keys, trace and span ids as lowercase hex, enums as integers, 64-bit
integers as strings). That is what the OpenTelemetry Collector's file exporter writes, so
its ``otlpjsonfile`` receiver can replay a file into any backend; `poly trace` reads it.

The JSON is built here from the SDK's spans rather than with the OTLP exporter's protobuf
encoder (``encode_spans``) plus ``json_format``: that pair cost about 230 µs per span here
against 50 µs, and export shares the GIL with the calls being traced. A test holds the two
encodings equal.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind

__all__ = [
    "DEFAULT_MAX_BYTES",
    "INT64",
    "SPAN_KINDS",
    "SpanFileExporter",
    "otlp_json",
    "otlp_json_text",
    "span_flags",
]

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
"""Past this size a file moves to ``<name>.1`` (replacing the one there) and a new one starts."""

_log = logging.getLogger("poly.telemetry")

SPAN_KINDS = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
"""OTLP's ``SpanKind`` numbers (the span file's and `kit.telemetry.otlp`'s)."""
# opentelemetry.proto.trace.v1.SpanFlags: whether the parent (or link) is remote is known / true.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
INT64 = range(-(2**63), 2**63)
"""What an OTLP ``intValue`` holds; the encoders leave out an int attribute outside it."""


class SpanFileExporter(SpanExporter):
    """Appends each batch of spans to `path` as one OTLP/JSON line.

    Safe to call from several threads; the file (mode 0o600) and its folder are created
    when missing, even after start (someone cleaned up). An I/O error is logged once and
    returns ``FAILURE``: tracing never fails a call.
    """

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._path = Path(path)
        self._rotated = self._path.with_name(self._path.name + ".1")
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._shut_down = False
        self._failing = False
        self._torn = False  # a write stopped half-way: start the next line on a line of its own

    @property
    def path(self) -> Path:
        return self._path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        line = otlp_json_text(spans).encode() + b"\n"
        with self._lock:
            try:
                self._append(b"\n" + line if self._torn else line)
            except OSError as error:
                if not self._failing:
                    _log.warning(
                        "cannot write spans to %s (%s); spans are dropped until it works again",
                        self._path,
                        error.strerror or error,
                    )
                self._failing = True
                return SpanExportResult.FAILURE
            if self._failing:
                _log.info("writing spans to %s again", self._path)
            self._failing = False
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:  # an export under way finishes its line first
            self._shut_down = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # each export is written through before it returns: nothing is buffered

    def _append(self, line: bytes) -> None:
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            size = self._path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self._max_bytes:
            os.replace(self._path, self._rotated)
        descriptor = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(descriptor).st_mode & 0o077:  # made by something else, or before umask-proofing
                os.fchmod(descriptor, 0o600)
            view = memoryview(line)
            while view:  # a regular file takes it in one write unless the disk fills up
                self._torn = True
                written = os.write(descriptor, view)
                if written == 0:
                    raise OSError(f"wrote nothing to {self._path}")
                view = view[written:]
            self._torn = False
        finally:
            os.close(descriptor)


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """`spans` as the OTLP/JSON form of an ``ExportTraceServiceRequest``, grouped by resource
    and instrumentation scope as the OTLP exporter groups them."""
    document: dict[str, Any] = json.loads(otlp_json_text(spans))
    return document


def otlp_json_text(spans: Sequence[ReadableSpan]) -> str:
    """`otlp_json` as compact JSON text, written directly: building the dictionaries and then
    serialising them cost twice as much, on the thread that shares the GIL with the calls."""
    grouped: dict[int, tuple[Any, dict[InstrumentationScope | None, list[str]]]] = {}
    for span in spans:
        # By identity: a provider has one Resource, and hashing one serialises its attributes.
        _, scopes = grouped.setdefault(id(span.resource), (span.resource, {}))
        scopes.setdefault(span.instrumentation_scope or None, []).append(_span(span))
    resource_spans = []
    for resource, scopes in grouped.values():
        entry = (
            '{"resource":'
            + _dumps(_omit_empty({"attributes": _attributes(resource.attributes)}))
            + ',"scopeSpans":['
            + ",".join(_scope_spans(scope, encoded) for scope, encoded in scopes.items())
            + "]"
        )
        if resource.schema_url:
            entry += ',"schemaUrl":' + _string(resource.schema_url)
        resource_spans.append(entry + "}")
    return '{"resourceSpans":[' + ",".join(resource_spans) + "]}"


_string = json.encoder.encode_basestring_ascii
"""A JSON string literal (C), escaped as ``json.dumps`` escapes it."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _scope_spans(scope: InstrumentationScope | None, spans: list[str]) -> str:
    joined = ",".join(spans)
    if scope is None:
        return '{"scope":{},"spans":[' + joined + "]}"
    encoded = (
        '{"scope":'
        + _dumps(
            _omit_empty(
                {"name": scope.name, "version": scope.version, "attributes": _attributes(scope.attributes)}
            )
        )
        + ',"spans":['
        + joined
        + "]"
    )
    if scope.schema_url:
        encoded += ',"schemaUrl":' + _string(scope.schema_url)
    return encoded + "}"


def _span(span: ReadableSpan) -> str:
    # Written for the common span (a few scalar attributes, no events or links): each field
    # only when proto3 JSON shows it, no dictionary in between.
    context = span.get_span_context()
    assert context is not None  # a recorded span always has one
    parts = [f'{{"traceId":"{context.trace_id:032x}","spanId":"{context.span_id:016x}"']
    if context.trace_state:
        state = ",".join(f"{key}={value}" for key, value in context.trace_state.items())
        parts.append(',"traceState":' + _string(state))
    parent = span.parent
    if parent:
        parts.append(f',"parentSpanId":"{parent.span_id:016x}"')
    parts.append(f',"flags":{span_flags(parent)}')
    if span.name:
        parts.append(',"name":' + _string(span.name))
    parts.append(
        f',"kind":{SPAN_KINDS[span.kind]},"startTimeUnixNano":"{span.start_time or 0}"'
        f',"endTimeUnixNano":"{span.end_time or 0}"'
    )
    if span.attributes:
        parts.append(',"attributes":[' + _attributes_text(span.attributes) + "]")
    if span.dropped_attributes:
        parts.append(f',"droppedAttributesCount":{span.dropped_attributes}')
    # Each read of events or links copies them: read once.
    if found_events := span.events:
        events = [
            _omit_empty(
                {
                    "timeUnixNano": str(event.timestamp),
                    "name": event.name,
                    "attributes": _attributes(event.attributes),
                    "droppedAttributesCount": event.dropped_attributes,
                }
            )
            for event in found_events
        ]
        parts.append(',"events":' + _dumps(events))
    if span.dropped_events:
        parts.append(f',"droppedEventsCount":{span.dropped_events}')
    if found_links := span.links:
        links = [
            _omit_empty(
                {
                    "traceId": f"{link.context.trace_id:032x}",
                    "spanId": f"{link.context.span_id:016x}",
                    "attributes": _attributes(link.attributes),
                    "droppedAttributesCount": link.dropped_attributes,
                    "flags": span_flags(link.context),
                }
            )
            for link in found_links
        ]
        parts.append(',"links":' + _dumps(links))
    if span.dropped_links:
        parts.append(f',"droppedLinksCount":{span.dropped_links}')
    status = span.status
    # Present even when unset, as the protobuf encoder leaves it.
    message, code = status.description, status.status_code.value
    if message:
        parts.append(',"status":{"message":' + _string(message) + (f',"code":{code}}}' if code else "}"))
    else:
        parts.append(f',"status":{{"code":{code}}}' if code else ',"status":{}')
    parts.append("}")
    return "".join(parts)


_SEEN_LIMIT = 4096
_seen_strings: dict[tuple[str, str], str] = {}
"""Encoded string attributes by (key, value): most repeat from span to span (rpc.method,
http.route, peer addresses), a few never do (request ids), so the table is emptied when full."""


def _attributes_text(attributes: Mapping[str, Any]) -> str:
    encoded = []
    seen = _seen_strings
    for key, value in attributes.items():
        if type(value) is str:  # most attributes: no checks needed
            text = seen.get((key, value))
            if text is None:
                if len(seen) >= _SEEN_LIMIT:
                    seen.clear()
                text = seen[key, value] = (
                    '{"key":' + _string(key) + ',"value":{"stringValue":' + _string(value) + "}}"
                )
            encoded.append(text)
            continue
        if type(value) is int and value in INT64:  # status codes, ports: as _value writes them
            encoded.append('{"key":' + _string(key) + f',"value":{{"intValue":"{value}"}}}}')
            continue
        try:
            encoded.append('{"key":' + _string(key) + ',"value":' + _dumps(_value(value)) + "}")
        except (TypeError, ValueError) as error:  # the protobuf encoder drops such an attribute too
            _log.debug("span attribute %s not encoded: %s", key, error)
    return ",".join(encoded)


def span_flags(context: SpanContext | None) -> int:
    """OTLP ``SpanFlags`` for a span's parent or a link: whether it is remote is known, and is it."""
    return _HAS_IS_REMOTE | (_IS_REMOTE if context is not None and context.is_remote else 0)


def _omit_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """Proto3 JSON leaves out fields at their default ("", 0, empty list)."""
    return {key: value for key, value in fields.items() if value not in ("", 0, None, [])}


def _attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    encoded = []
    for key, value in (attributes or {}).items():
        kind = type(value)
        if kind is str:  # most attributes: no checks needed
            encoded.append({"key": key, "value": {"stringValue": value}})
            continue
        try:
            encoded.append({"key": key, "value": _value(value)})
        except (TypeError, ValueError) as error:  # the protobuf encoder drops such an attribute too
            _log.debug("span attribute %s not encoded: %s", key, error)
    return encoded


def _value(value: Any) -> dict[str, Any]:  # noqa: PLR0911 - one return per type
    """An ``AnyValue`` (checked in the protobuf encoder's order: bool is an int, str a Sequence)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        if value not in INT64:
            raise ValueError(f"{value} does not fit in an int64")
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Sequence):
        return {"arrayValue": _omit_empty({"values": [_value(item) for item in value]})}
    if isinstance(value, Mapping):
        items = [{"key": str(key), "value": _value(item)} for key, item in value.items()]
        return {"kvlistValue": _omit_empty({"values": items})}
    raise TypeError(f"cannot encode a {type(value).__name__}")
