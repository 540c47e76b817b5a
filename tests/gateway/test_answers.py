"""gateway.answers: a backend's reply with its metadata, and the edge's own refusals."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from gateway import answers, tickets
from tests.support.edge_server import parsed_request


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ('application/json; charset="UTF-8"', True),
        ("application/merge-patch+json", True),
        ("application/json; charset=latin-1", False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
    ],
    ids=["json", "utf-8", "quoted-utf-8", "suffix", "latin-1", "text", "form", "none"],
)
def test_a_body_must_say_it_is_json(content_type: str, accepted: bool) -> None:
    request = parsed_request("POST", {"Content-Type": content_type, "Content-Length": "2"})
    if accepted:
        answers.require_json(request)
        return
    with pytest.raises(answers.Refusal) as refused:
        answers.require_json(request)
    assert refused.value.http == 415 and refused.value.extra == {"Accept-Post": "application/json"}
    assert refused.value.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_no_body_needs_no_type_and_patch_is_told_accept_patch() -> None:
    answers.require_json(parsed_request("POST", {"Content-Length": "0"}))
    with pytest.raises(answers.Refusal) as refused:
        answers.require_json(parsed_request("PATCH", {"Content-Type": "text/plain", "Content-Length": "1"}))
    assert "Accept-Patch" in refused.value.extra


def test_metadata_becomes_headers_and_trailers_only_for_a_client_that_takes_them() -> None:
    initial: list[answers.Metadata] = [("x-served-by", "library")]
    trailing: list[answers.Metadata] = [("x-cost", "3")]
    plain = answers.answer_with_metadata(parsed_request("GET", {}), 200, b"{}", initial, trailing)
    assert plain.headers["Grpc-Metadata-x-served-by"] == "library"
    assert plain.headers["Grpc-Trailer-x-cost"] == "3" and not plain.trailers
    trailed = answers.answer_with_metadata(
        parsed_request("GET", {"TE": "trailers"}), 200, b"{}", initial, trailing
    )
    assert trailed.trailers == [("Grpc-Trailer-x-cost", "3")] and "Grpc-Trailer-x-cost" not in trailed.headers
    empty = answers.answer_with_metadata(parsed_request("GET", {}), 204, b"{}", [], [])
    assert empty.body == b"" and empty.status == 204


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (29.4, "30")])
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: str) -> None:
    assert answers.retry_after(wait) == {"Retry-After": header}


@pytest.mark.parametrize(
    ("error", "http", "reason"),
    [
        (tickets.TooManyTickets("too many", 3.0), 429, "STREAM_TICKETS_EXHAUSTED"),
        (tickets.MisplacedTicket("misplaced"), 400, "STREAM_TICKET_MISPLACED"),
        (tickets.InvalidTicket("invalid"), 401, "STREAM_TICKET_INVALID"),
        (tickets.TokenExpired("expired"), 401, "TOKEN_EXPIRED"),
    ],
    ids=["too-many", "misplaced", "invalid", "expired"],
)
def test_ticket_errors_are_answered_by_kind(error: tickets.TicketError, http: int, reason: str) -> None:
    refused = answers.ticket_refusal(error)
    info = error_details_pb2.ErrorInfo()
    assert refused.status.details[0].Unpack(info)
    assert refused.http == http and info.reason == reason
