"""`poly trace`: one trace from the span files `poly up` keeps, as a terminal waterfall.

``poly trace WHAT`` finds the trace (`services.cli.spanfiles` says how WHAT matches) and
prints one row per span in tree order: service, span, start offset and duration in ms, a
bar on the trace's time scale, and status (``OK``, ``ERROR`` with its gRPC or HTTP code, or
a failure code the span did not mark as an error), with an errored span's message and a
span's links beneath it. ``--list`` shows the recent traces (or every trace WHAT matches,
newest first, saying which one ``poly trace WHAT`` shows), ``--json`` the spans themselves.
Colour only on a terminal; the width is $COLUMNS, else the terminal's, else 100.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from services.cli.exits import FAILURE, OK
from services.cli.spanfiles import (
    CREATED,
    EARLIEST,
    ERROR,
    REQUEST_ID,
    TRACE_ID,
    Found,
    SpanRecord,
    TraceSummary,
    find,
    recent,
    tree,
)

__all__ = ["run", "waterfall"]

_RPC_NAME = re.compile(r"^/?[\w.]+\.(\w+/\w+)$")  # (/)poly.orders.v1.OrdersService/CreateOrder
_GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Style:
    colour: bool
    unicode: bool

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and text else text

    @property
    def block(self) -> str:
        return "█" if self.unicode else "#"

    @property
    def more(self) -> str:
        return "…" if self.unicode else "~"

    @property
    def link(self) -> str:
        return "↪" if self.unicode else "->"

    @property
    def linked(self) -> str:
        return "↩" if self.unicode else "<-"


_RED, _GREEN, _YELLOW, _DIM, _BOLD = "31", "32", "33", "2", "1"
_STATUS_CODES = ("UNSET", "OK", "ERROR")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SERVICE_COLOURS = ("36", "35", "34", "32", "33", "96", "95", "94")
_GAP = "  "
_MS = 8  # width of the START and DUR columns


@dataclass(frozen=True, slots=True)
class _Columns:
    service: int
    name: int
    bar: int

    @classmethod
    def fit(
        cls, width: int, services: Sequence[str], labels: Sequence[str], statuses: Sequence[str]
    ) -> _Columns:
        """Names as long as they need, but the bar keeps 16 columns or a quarter of the room."""
        service = min(max(len("SERVICE"), *map(len, services)), 16)
        room = width - service - 2 * _MS - max(len("STATUS"), *map(len, statuses)) - 5 * len(_GAP)
        name = max(12, min(max(map(len, labels)), room - max(16, room // 4)))
        return cls(service, name, max(6, room - name))


def waterfall(
    spans: Sequence[SpanRecord],
    *,
    linked_from: Sequence[SpanRecord] = (),
    width: int = 100,
    colour: bool = False,
    unicode: bool = True,
) -> str:
    """One trace as rows (service, span, start and duration in ms, a bar on the trace's time
    scale, status), each span under its parent; beneath a span, its error message, its links
    and the spans of `linked_from` (other traces) that link to it."""
    style = _Style(colour, unicode)
    rows = tree(spans)
    ids = {span.span_id for span in spans}
    start = min(span.start_ns for span in spans)
    total = max(max(span.end_ns for span in spans) - start, 1)
    services = sorted({span.service for span in spans})
    palette = {name: _SERVICE_COLOURS[i % len(_SERVICE_COLOURS)] for i, name in enumerate(services)}
    labels = [_span_label(span, depth, ids, style) for depth, span in rows]
    statuses = [_status(span) for _, span in rows]
    columns = _Columns.fit(width, services, labels, statuses)
    axis = f"{_ms(total)} ms"
    axis = f"{'0':<{columns.bar - len(axis)}}{axis}" if columns.bar > len(axis) else ""
    heading = _GAP.join(
        (
            f"{'SERVICE':<{columns.service}}",
            f"{'SPAN':<{columns.name}}",
            f"{'START ms':>{_MS}}",
            f"{'DUR ms':>{_MS}}",
            f"{axis:<{columns.bar}}",
            "STATUS",
        )
    )
    request = next(
        (_printable(span.attributes[REQUEST_ID]) for _, span in rows if REQUEST_ID in span.attributes), ""
    )
    lines = [
        f"trace {rows[0][1].trace_id}  {_clock(start)}  {_ms(total)} ms  {len(spans)} spans",
        *([f"request {request}"] if request else []),
        "",
        style.paint(heading.rstrip(), _BOLD),
    ]
    for (depth, span), label, status in zip(rows, labels, statuses, strict=True):
        first = min((span.start_ns - start) * columns.bar // total, columns.bar - 1)
        last = min(max(first + 1, -(-(span.end_ns - start) * columns.bar // total)), columns.bar)
        paint = _RED if span.status_code == ERROR else palette[span.service]
        cells = (
            style.paint(
                f"{_cut(_printable(span.service), columns.service, style):<{columns.service}}",
                palette[span.service],
            ),
            f"{_cut_label(label, columns.name, style):<{columns.name}}",
            f"{_ms(span.start_ns - start):>{_MS}}",
            f"{_ms(span.end_ns - span.start_ns):>{_MS}}",
            " " * first + style.paint(style.block * (last - first), paint) + " " * (columns.bar - last),
            _paint_status(status, style),
        )
        lines.append(_GAP.join(cells).rstrip())
        indent = " " * (columns.service + len(_GAP) + 2 * depth + 2)
        linking = [other for other in linked_from if (span.trace_id, span.span_id) in other.links]
        lines.extend(indent + style.paint(note, paint) for note, paint in _notes(span, ids, linking, style))
    orphans = sum(1 for span in spans if span.parent_id and span.parent_id not in ids)
    if orphans:
        lines += [
            "",
            f"{style.more} {orphans} span(s) whose parent is not in the files: not written yet (spans are "
            "written about a second after a call ends), sampled out, or kept under another POLY_HOME",
        ]
    return "\n".join(lines)


def _span_label(span: SpanRecord, depth: int, ids: set[str], style: _Style) -> str:
    short = _RPC_NAME.match(span.name)
    name = short[1] if short else span.name  # OrdersService/CreateOrder: the package adds width, not meaning
    orphan = span.parent_id and span.parent_id not in ids
    return "  " * depth + (f"{style.more} " if orphan else "") + (_printable(name) or "(unnamed)")


def _status(span: SpanRecord) -> str:
    """ERROR and its code, else a failure code the span did not mark as an error (a server
    span's NOT_FOUND, an HTTP 404), else OK."""
    code = ""
    grpc_code = span.attributes.get("rpc.grpc.status_code")
    http_code = span.attributes.get("http.response.status_code")
    if isinstance(grpc_code, int) and not isinstance(grpc_code, bool):
        code = _GRPC_CODES[grpc_code] if 0 <= grpc_code < len(_GRPC_CODES) else str(grpc_code)
    elif isinstance(http_code, int) and not isinstance(http_code, bool):
        code = str(http_code)
    if span.status_code == ERROR:
        return f"ERROR {code}" if code and code != "OK" else "ERROR"
    failed = code not in ("", "OK") and not (code.isdigit() and int(code) < 400)
    return code if failed else "OK"


def _paint_status(status: str, style: _Style) -> str:
    return style.paint(status, _GREEN if status == "OK" else _RED if status.startswith("ERROR") else _YELLOW)


def _notes(
    span: SpanRecord, ids: set[str], linked_from: Sequence[SpanRecord], style: _Style
) -> Iterator[tuple[str, str]]:
    """The lines under a span's row: its error message, its links, the links to it."""
    if span.status_code == ERROR:
        message = span.status_message or _exception(span)
        for line in message.splitlines()[:8]:
            yield _printable(line), _RED
    for trace_id, span_id in span.links:
        if trace_id == span.trace_id:
            where = f"span {span_id}" + ("" if span_id in ids else " (not in the files)")
        else:
            where = f"trace {trace_id} (span {span_id}): poly trace {trace_id}"
        yield _printable(f"{style.link} linked to {where}"), _DIM
    for other in linked_from:
        note = f"{style.linked} linked from {other.service} {other.name}: poly trace {other.trace_id}"
        yield _printable(note), _DIM


def _exception(span: SpanRecord) -> str:
    for event in reversed(span.events):
        if event.name == "exception":
            kind = event.attributes.get("exception.type", "")
            message = event.attributes.get("exception.message", "")
            return f"{kind}: {message}" if kind and message else str(kind or message)
    return ""


def _cut_label(label: str, width: int, style: _Style) -> str:
    """`label` in `width`: an RPC's service shortened before its method (Pay…/AuthorizePayment)."""
    body = label.lstrip(" ").removeprefix(f"{style.more} ")  # the indent, and an orphan's mark
    indent = label[: len(label) - len(body)]
    service, slash, method = body.rpartition("/")
    keep = width - len(indent) - len(style.more) - len(slash + method)
    if len(label) <= width or " " in body or not service:
        return _cut(label, width, style)
    if keep < 3:  # not even the method fits whole: keep its start
        return _cut(f"{indent}{style.more}/{method}", width, style)
    return f"{indent}{service[:keep]}{style.more}/{method}"


def _cut(text: str, width: int, style: _Style) -> str:
    return text if len(text) <= width else text[: width - len(style.more)] + style.more


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:.1f}"


def _clock(nanoseconds: int) -> str:
    seconds, rest = divmod(nanoseconds, 1_000_000_000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d} UTC"


def _table(summaries: Sequence[TraceSummary]) -> str:
    lines = [f"{'START':<27}  {'DUR ms':>9}  {'SPANS':>5}  {'STATUS':<6}  {'TRACE':<32}  ROOT (SERVICES)"]
    for s in summaries:
        lines.append(
            f"{_clock(s.start_ns):<27}  {_ms(s.end_ns - s.start_ns):>9}  {s.spans:>5}  "
            + _printable(
                f"{'ERROR' if s.error else 'OK':<6}  {s.trace_id}  {s.root} ({', '.join(s.services)})"
            )
        )
    return "\n".join(lines)


def _span_json(depth: int, span: SpanRecord) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_id,
        "depth": depth,
        "service": span.service,
        "name": span.name,
        "kind": span.kind,
        "start_time_unix_nano": span.start_ns,
        "end_time_unix_nano": span.end_ns,
        "status": {"code": _status_code(span.status_code), "message": span.status_message},
        "attributes": dict(span.attributes),
        "links": [{"trace_id": trace_id, "span_id": span_id} for trace_id, span_id in span.links],
        "events": [
            {"name": e.name, "time_unix_nano": e.time_ns, "attributes": dict(e.attributes)}
            for e in span.events
        ],
    }


def _status_code(code: int) -> str:
    return _STATUS_CODES[code] if 0 <= code < len(_STATUS_CODES) else str(code)


def _printable(text: object) -> str:
    """`text` with control characters escaped: span data must not drive the terminal."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}", str(text))


def _can_show(out: TextIO, text: str) -> bool:
    """Whether `out` can encode `text` (a stream of str, without an encoding, can)."""
    if not out.encoding:
        return True
    try:
        text.encode(out.encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def run(
    home: Path,
    what: str | None,
    *,
    listing: bool = False,
    limit: int = 20,
    as_json: bool = False,
    out: TextIO | None = None,
    wait: float = 3.0,
) -> int:
    """`poly trace`: print the trace `what` names (or, with `listing`, the most recent
    traces, those `what` matches if given); exit status 0 found, 1 not found."""
    out = out or sys.stdout
    folder = home / "traces"
    # Spans reach the files about a second after a call ends, each process on its own clock:
    # a trace asked for right after its call is waited for briefly rather than reported
    # missing, or shown with the spans of a process that has not written them yet.
    deadline = time.monotonic() + wait
    try:
        while True:
            if listing:
                text = _listing(folder, what, limit, as_json)
                break
            found = find(folder, what or "")
            late = time.monotonic() >= deadline
            if found is not None and (late or not _still_arriving(found)):
                text = _trace(found, what or "", as_json, out)
                break
            if late:
                text = None
                break
            time.sleep(0.25)  # polling files another process writes: nothing to block on
    except OSError as error:
        print(
            f"poly trace: cannot read {error.filename or folder} ({error.strerror or error}); "
            "make it readable by this user, or choose another POLY_HOME (--home)",
            file=sys.stderr,
        )
        return FAILURE
    if text is None:
        print(f"poly trace: {_not_found(folder, what)}", file=sys.stderr)
        return FAILURE
    try:
        print(text, file=out, flush=True)
    except BrokenPipeError:  # `poly trace … | head` stopped reading: what it read is all it wanted
        if out is sys.stdout:  # and Python would complain again when it flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return OK


def _listing(folder: Path, what: str | None, limit: int, as_json: bool) -> str | None:
    if not what:
        summaries = recent(folder, limit)
        if not summaries:
            return None
        return json.dumps(list(map(_summary_json, summaries)), indent=2) if as_json else _table(summaries)
    matched = recent(folder, None, what)  # all of them: the one shown may be the oldest
    if not matched:
        return None
    if as_json:
        return json.dumps([_summary_json(s) | _choice_json(s) for s in matched[:limit]], indent=2)
    notes = []
    quoted = shlex.quote(what.strip())
    if len(matched) > limit:
        notes.append(
            f"{len(matched) - limit} older trace(s) match too "
            f"(`poly trace --list -n {len(matched)} {quoted}` lists them all)"
        )
    chosen = next((s for s in matched if s.chosen), None)  # None only if rotated away meanwhile
    if chosen is not None:
        why = {
            TRACE_ID: "the one with that id",
            CREATED: "the one that created it",
            EARLIEST: "the earliest (none here created it)",
        }.get(chosen.chosen, "the most recent")
        notes.append(
            f"`poly trace {quoted}` shows {chosen.trace_id}, {why}; `poly trace <TRACE>` shows another"
        )
    return "\n".join([_table(matched[:limit]), "", *map(_printable, notes)])


_RECENT_NS = 10 * 1_000_000_000
"""A trace whose last span ended this recently may still have spans on their way to the files."""


def _still_arriving(found: Found) -> bool:
    """Whether `found` is a recent trace with spans whose parent is not in the files yet. An
    old one stays as it is: its missing parents are elsewhere (a client's, another home)."""
    ids = {span.span_id for span in found.spans}
    orphaned = any(span.parent_id and span.parent_id not in ids for span in found.spans)
    newest = max((span.end_ns for span in found.spans), default=0)
    return orphaned and time.time_ns() - newest < _RECENT_NS


def _trace(found: Found, what: str, as_json: bool, out: TextIO) -> str:
    if as_json:
        document = {
            "trace_id": found.trace_id,
            "other_traces": list(found.others),
            "spans": [_span_json(depth, span) for depth, span in tree(found.spans)],
            "linked_from": [_span_json(0, span) for span in found.linked_from],
            "chosen": found.chosen,
        }
        return json.dumps(document, indent=2)
    text = waterfall(
        found.spans,
        linked_from=found.linked_from,
        width=max(shutil.get_terminal_size((100, 24)).columns, 60),  # COLUMNS, the terminal's, or 100
        colour=out.isatty(),
        unicode=_can_show(out, "█…↪↩"),
    )
    if found.others:
        text += "\n\n" + _others(found, what.strip())
    return text


def _others(found: Found, what: str) -> str:
    """The note under a trace that is one of several `what` matches: which one it is."""
    this = {
        TRACE_ID: "this is the one with that trace id",
        CREATED: "this is the one that created it",
        EARLIEST: "this is the earliest (none in the files created it)",
    }.get(found.chosen, "this is the most recent")
    return _printable(
        f"{len(found.others)} other trace(s) match {what}; {this} "
        f"(`poly trace --list {shlex.quote(what)}` lists them all, newest first)"
    )


def _summary_json(summary: TraceSummary) -> dict[str, Any]:
    return {
        "trace_id": summary.trace_id,
        "start_time_unix_nano": summary.start_ns,
        "duration_ms": round((summary.end_ns - summary.start_ns) / 1e6, 3),
        "spans": summary.spans,
        "services": list(summary.services),
        "root": summary.root,
        "error": summary.error,
    }


def _choice_json(summary: TraceSummary) -> dict[str, Any]:
    """Of a trace WHAT matched: did it create WHAT's resource, and is it the one shown (why)."""
    return {"created": summary.created, "chosen": summary.chosen or None}


def _not_found(folder: Path, what: str | None) -> str:
    if not folder.is_dir():
        return (
            f"no spans: {folder} does not exist. `poly up` writes spans there (unless OTEL_TRACES_EXPORTER "
            "or OTEL_EXPORTER_OTLP_ENDPOINT sends them elsewhere); is POLY_HOME the same as poly up's? "
            "(--home chooses another)"
        )
    subject = f"no trace matches {_printable(what)}" if what else f"no traces in {folder}"
    return (
        f"{subject}; spans are written about a second after a call ends; is POLY_HOME the same as "
        f"poly up's? (read {folder}; --home chooses another; `poly trace --list` shows the recent traces)"
    )
