"""Reading the span files `poly up` keeps, for `poly trace`: spans back, traces found.

The files are ``<POLY_HOME>/traces/<component>.jsonl`` and, after rotation, ``….jsonl.1``:
OTLP/JSON lines written by `kit.telemetry.spanfile`, one export per line. A line cut short
(a process killed while writing) is skipped. WHAT is a trace id (32 hex digits, or a whole
``traceparent``), an X-Request-Id (span attribute ``poly.request_id``) or a resource name
such as ``orders/abc`` (``poly.resource.name``). When several traces match, a resource name
shows the trace that created it (one with the server span of a successful standard Create
method, ``…/CreateOrder``, naming it: the kit names a call's resource from its request and,
once it answers, from its response, and a Create request names none), else the earliest
naming it (its creation rotated out of the files, or it was created by an event); an
X-Request-Id shows the most recent. Lines are searched as bytes for WHAT first, so only
matching ones are parsed.

Standard library only (no OpenTelemetry): the command answers at once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CREATED",
    "EARLIEST",
    "ERROR",
    "MOST_RECENT",
    "REQUEST_ID",
    "RESOURCE_NAME",
    "TRACE_ID",
    "SpanEvent",
    "SpanRecord",
    "Found",
    "TraceSummary",
    "read_spans",
    "spans_from_otlp",
    "find",
    "recent",
    "tree",
]

REQUEST_ID = "poly.request_id"
RESOURCE_NAME = "poly.resource.name"
ERROR = 2
"""OTLP ``STATUS_CODE_ERROR``."""

# Why `find` chose the trace it shows (`Found.chosen`).
TRACE_ID = "trace id"
"""WHAT is its id."""
CREATED = "created"
"""WHAT is a resource name, and this trace created the resource."""
EARLIEST = "earliest"
"""WHAT is a resource name, no trace in the files created it, and this is the first to name it."""
MOST_RECENT = "most recent"
"""WHAT is an X-Request-Id: the most recent trace carrying it."""

_HEX = re.compile(r"[0-9a-fA-F]+")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
_STATUS_CODES = ("unset", "ok", "error")
_MANY_NEEDLES = 64  # searching for more trace ids than this, parsing every line is as quick
_CREATE = re.compile(r"Create[A-Z]\w*")  # AIP-133's standard method: CreateOrder, CreateWebhook


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span as read back; ids are lowercase hex, ``parent_id`` is "" for a root."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status_code: int = 0
    status_message: str = ""
    attributes: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[tuple[str, str], ...] = ()
    """(trace id, span id) of each linked span."""
    events: tuple[SpanEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Found:
    trace_id: str
    spans: tuple[SpanRecord, ...]
    others: tuple[str, ...] = ()
    """Other traces that matched too, most recent first."""
    linked_from: tuple[SpanRecord, ...] = ()
    """Spans of other traces with a link to one of `spans` (a batch that joined several traces)."""
    chosen: str = MOST_RECENT
    """Why this trace of those that matched: `TRACE_ID`, `CREATED`, `EARLIEST` or `MOST_RECENT`."""


@dataclass(frozen=True, slots=True)
class TraceSummary:
    trace_id: str
    start_ns: int
    end_ns: int
    spans: int
    services: tuple[str, ...]
    root: str
    error: bool
    created: bool = False
    """A span of it created the resource the listing asked for."""
    chosen: str = ""
    """Why `find` shows it for what the listing asked for (`Found.chosen`); "" if it does not."""


def read_spans(folder: Path, needles: Collection[bytes] = ()) -> Iterator[SpanRecord]:
    """Every span under `folder` (each span once), or only those on lines holding one of
    `needles`. Raises OSError for a file that exists but cannot be read."""
    seen: set[tuple[str, str]] = set()
    files = sorted([*folder.glob("*.jsonl"), *folder.glob("*.jsonl.1")])
    for path in files:
        with path.open("rb") as lines:
            for line in lines:
                if needles and not any(needle in line for needle in needles):
                    continue
                try:
                    document = json.loads(line)
                except (ValueError, RecursionError):  # torn by a crash mid-write, or not ours
                    continue
                for span in spans_from_otlp(document):
                    if (span.trace_id, span.span_id) not in seen:
                        seen.add((span.trace_id, span.span_id))
                        yield span


def spans_from_otlp(document: Any) -> list[SpanRecord]:
    """The spans of one OTLP/JSON ``ExportTraceServiceRequest``; [] if it is not one."""
    spans: list[SpanRecord] = []
    try:
        for resource_spans in document.get("resourceSpans") or ():
            service = _service(resource_spans)
            for scope_spans in resource_spans.get("scopeSpans") or ():
                spans.extend(_span(span, service) for span in scope_spans.get("spans") or ())
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError):
        return []
    return spans


def _service(resource_spans: Mapping[str, Any]) -> str:
    attributes = _attributes((resource_spans.get("resource") or {}).get("attributes"))
    return str(attributes.get("service.name") or "unknown")


def _span(span: Mapping[str, Any], service: str) -> SpanRecord:
    status = span.get("status") or {}
    return SpanRecord(
        trace_id=_id(span["traceId"]),
        span_id=_id(span["spanId"]),
        parent_id=_id(span.get("parentSpanId", "")),
        name=str(span.get("name", "")),
        kind=_KINDS[_enum(span.get("kind", 0), "SPAN_KIND_", _KINDS)],
        service=service,
        start_ns=int(span.get("startTimeUnixNano", 0)),
        end_ns=int(span.get("endTimeUnixNano", 0)),
        status_code=_enum(status.get("code", 0), "STATUS_CODE_", _STATUS_CODES),
        status_message=str(status.get("message", "")),
        attributes=_attributes(span.get("attributes")),
        links=tuple((_id(link["traceId"]), _id(link["spanId"])) for link in span.get("links") or ()),
        events=tuple(
            SpanEvent(str(e.get("name", "")), int(e.get("timeUnixNano", 0)), _attributes(e.get("attributes")))
            for e in span.get("events") or ()
        ),
    )


def _enum(value: int | str, prefix: str, names: Sequence[str]) -> int:
    """An OTLP enum: a number, as OTLP/JSON says, or the name protobuf's JSON writes by default."""
    if isinstance(value, str) and not value.isdigit():
        name = value.removeprefix(prefix).lower()  # `names` are lower case
        return names.index(name) if name in names else 0
    number = int(value)
    return number if 0 <= number < len(names) else 0


def _id(value: str) -> str:
    """Lowercase hex (OTLP/JSON); base64 (protobuf's JSON of bytes) is accepted too."""
    if _HEX.fullmatch(value) and len(value) in (16, 32):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _attributes(pairs: Any) -> dict[str, Any]:
    return {str(pair["key"]): _any_value(pair.get("value") or {}) for pair in pairs or ()}


def _any_value(value: Mapping[str, Any]) -> Any:
    for key, item in value.items():
        if key == "intValue":
            return int(item)
        if key == "doubleValue":  # "NaN" and "Infinity" stay text (JSON has no such numbers)
            return float(item) if isinstance(item, int | float) else str(item)
        if key == "arrayValue":
            return [_any_value(v) for v in item.get("values") or ()]
        if key == "kvlistValue":
            return _attributes(item.get("values"))
        return item  # stringValue, boolValue, bytesValue (base64 text)
    return None


def _trace_id_in(what: str) -> str | None:
    """The trace id `what` names: 32 hex digits, or a whole traceparent header value."""
    text = what.strip().lower()
    if len(text) == 32 and _HEX.fullmatch(text):
        return text
    match = _TRACEPARENT.match(text)
    return match[1] if match else None


def _needles(text: str) -> set[bytes]:
    """`text` as it may appear inside a JSON line (with and without \\u escapes)."""
    return {json.dumps(text)[1:-1].encode(), json.dumps(text, ensure_ascii=False)[1:-1].encode()}


def _id_needles(trace_id: str) -> set[bytes]:
    """A trace id as OTLP/JSON writes it (hex), and as protobuf's JSON writes bytes (base64)."""
    return {trace_id.encode(), base64.b64encode(bytes.fromhex(trace_id))}


@dataclass(slots=True)
class _Match:
    """What one trace has of WHAT: the starts of its matching spans, and how they matched."""

    first_ns: int
    last_ns: int
    named: bool = False
    """A span names WHAT as its resource."""
    created_ns: int | None = None
    """The start of the earliest span that created WHAT's resource."""

    def add(self, span: SpanRecord, what: str) -> None:
        self.first_ns, self.last_ns = min(self.first_ns, span.start_ns), max(self.last_ns, span.start_ns)
        if span.attributes.get(RESOURCE_NAME) == what:
            self.named = True
            if _created(span) and (self.created_ns is None or span.start_ns < self.created_ns):
                self.created_ns = span.start_ns


def _created(span: SpanRecord) -> bool:
    """Whether `span` (which names a resource) served a standard Create method that succeeded:
    its resource is the one the response named (a Create request has no ``name``)."""
    method = span.attributes.get("rpc.method") or span.name.rpartition("/")[2]
    code = span.attributes.get("rpc.grpc.status_code", 0)
    return span.kind == "server" and bool(_CREATE.fullmatch(str(method))) and code == 0


def _matching(folder: Path, what: str) -> tuple[dict[str, _Match], str | None]:
    """Each trace with a span that matches `what`, and the trace id `what` names (if any)."""
    trace_id = _trace_id_in(what)
    needles = _needles(what) | (_id_needles(trace_id) if trace_id else set())
    matches: dict[str, _Match] = {}
    for span in read_spans(folder, needles):
        if span.trace_id == trace_id or what in (
            span.attributes.get(REQUEST_ID),
            span.attributes.get(RESOURCE_NAME),
        ):
            matches.setdefault(span.trace_id, _Match(span.start_ns, span.start_ns)).add(span, what)
    return matches, trace_id


def _choose(matches: Mapping[str, _Match], trace_id: str | None) -> tuple[str, str]:
    """The trace to show of `matches` (not empty), and why (`Found.chosen`)."""
    if trace_id is not None and trace_id in matches:  # an exact trace id beats a look-alike request id
        return trace_id, TRACE_ID
    # A resource name holds a "/" and an X-Request-Id never does (the edge allows [A-Za-z0-9._:-]).
    named = {trace: match for trace, match in matches.items() if match.named}
    created = {trace: match.created_ns for trace, match in named.items() if match.created_ns is not None}
    if created:  # a retried idempotent create names it again: the first one made it
        return min(created, key=lambda trace: (created[trace], trace)), CREATED
    if named:
        return min(named, key=lambda trace: (named[trace].first_ns, trace)), EARLIEST
    return max(matches, key=lambda trace: (matches[trace].last_ns, trace)), MOST_RECENT


def find(folder: Path, what: str) -> Found | None:
    """The trace `what` names (see the module's docstring for which of several), or None."""
    matches, trace_id = _matching(folder, what.strip())
    if not matches:
        return None
    chosen, why = _choose(matches, trace_id)
    others = sorted(
        (trace for trace in matches if trace != chosen),
        key=lambda trace: (matches[trace].last_ns, trace),
        reverse=True,
    )
    spans, linked_from = [], []
    for span in read_spans(folder, _id_needles(chosen)):  # a link names the trace too: those lines come along
        if span.trace_id == chosen:
            spans.append(span)
        elif any(trace_id == chosen for trace_id, _ in span.links):
            linked_from.append(span)
    return Found(chosen, tuple(spans), tuple(others), tuple(linked_from), why) if spans else None


def recent(folder: Path, limit: int | None, what: str | None = None) -> list[TraceSummary]:
    """The `limit` (None: all) most recent traces, or of those matching `what` if given,
    newest first; with `what`, each says whether it created what `what` names and whether
    it is the one `find` shows."""
    matches: dict[str, _Match] = {}
    chosen: tuple[str, str] | None = None
    needles: set[bytes] = set()
    if what:
        matches, trace_id = _matching(folder, what.strip())
        if not matches:
            return []
        chosen = _choose(matches, trace_id)
        needles = set().union(*map(_id_needles, matches)) if len(matches) <= _MANY_NEEDLES else set()
    traces: dict[str, list[SpanRecord]] = {}
    for span in read_spans(folder, needles):
        if not what or span.trace_id in matches:
            traces.setdefault(span.trace_id, []).append(span)
    summaries = [
        _summary(
            trace,
            spans,
            created=trace in matches and matches[trace].created_ns is not None,
            chosen=chosen[1] if chosen is not None and trace == chosen[0] else "",
        )
        for trace, spans in traces.items()
    ]
    newest_first = sorted(summaries, key=lambda s: (s.start_ns, s.trace_id), reverse=True)
    return newest_first if limit is None else newest_first[:limit]


def _summary(trace_id: str, spans: list[SpanRecord], *, created: bool, chosen: str) -> TraceSummary:
    rows = tree(spans)
    return TraceSummary(
        trace_id=trace_id,
        start_ns=min(span.start_ns for span in spans),
        end_ns=max(span.end_ns for span in spans),
        spans=len(spans),
        services=tuple(sorted({span.service for span in spans})),
        root=rows[0][1].name,
        error=any(span.status_code == ERROR for span in spans),
        created=created,
        chosen=chosen,
    )


def tree(spans: Sequence[SpanRecord]) -> list[tuple[int, SpanRecord]]:
    """(depth, span) in tree order: each span under its parent, siblings by start time.
    A span whose parent is not among `spans` is a root."""
    ids = {span.span_id for span in spans}
    children: dict[str, list[SpanRecord]] = {}
    roots = []
    for span in spans:
        if span.parent_id in ids and span.parent_id != span.span_id:
            children.setdefault(span.parent_id, []).append(span)
        else:
            roots.append(span)
    order: list[tuple[int, SpanRecord]] = []
    placed: set[str] = set()
    pending = [(0, span) for span in sorted(roots, key=_by_start, reverse=True)]
    while pending:
        depth, span = pending.pop()
        if span.span_id in placed:
            continue
        placed.add(span.span_id)
        order.append((depth, span))
        pending.extend(
            (depth + 1, child)
            for child in sorted(children.get(span.span_id, ()), key=_by_start, reverse=True)
        )
    # A cycle of parent ids (never made by an SDK) is unreachable from a root: list it flat.
    order.extend((0, span) for span in sorted(spans, key=_by_start) if span.span_id not in placed)
    return order


def _by_start(span: SpanRecord) -> tuple[int, int, str]:
    return (span.start_ns, -span.end_ns, span.span_id)  # the enclosing span first on a tie
