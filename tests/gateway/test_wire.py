"""gateway.wire: what the edge's servers hand the handler, whatever the HTTP version."""

from __future__ import annotations

import email.utils
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire import (
    HTTP_11,
    Response,
    field_lines,
    http_date,
    json_response,
    refusal_body,
)
from tests.support.edge_server import parsed_request


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ([], ""),
        ([("A", "1")], "A: 1\r\n"),
        ([("A", "1"), ("B", "two words")], "A: 1\r\nB: two words\r\n"),
    ],
    ids=["none", "one", "two"],
)
def test_field_lines_writes_one_line_per_field(fields: list[tuple[str, str]], expected: str) -> None:
    assert field_lines(fields) == expected


@pytest.mark.parametrize("bad", ["\r", "\n", "\x00", "\r\n"], ids=["cr", "lf", "nul", "crlf"])
@pytest.mark.parametrize("where", ["name", "value"])
def test_field_lines_refuses_what_would_split_the_answer(bad: str, where: str) -> None:
    field = (f"X{bad}Y", "v") if where == "name" else ("X", f"a{bad}Set-Cookie: x=1")
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        field_lines([("Ok", "1"), field])


@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=16)), max_size=6))
def test_field_lines_either_refuses_or_keeps_each_field_on_its_own_line(
    fields: list[tuple[str, str]],
) -> None:
    forbidden = any(c in name + value for name, value in fields for c in "\r\n\x00")
    try:
        lines = field_lines(fields)
    except ValueError:
        assert forbidden
        return
    assert not forbidden
    assert lines.count("\r\n") == len(fields)


@pytest.mark.parametrize(("status", "code"), [(400, 3), (408, 4), (413, 8), (431, 8), (505, 12), (500, 13)])
def test_refusals_are_google_rpc_status_bodies(status: int, code: int) -> None:
    document = json.loads(refusal_body(status))
    assert document["code"] == code and document["message"] and document["details"] == []


def test_http_date_is_an_imf_fixdate() -> None:
    value = http_date()
    assert value.endswith(" GMT")
    assert email.utils.parsedate_to_datetime(value).tzname() == "UTC"


def test_a_request_reads_its_query_and_decoded_path() -> None:
    request = parsed_request("GET", {}, "/v1/a%20b?x=1&x=2&y=&z=%2B+")
    assert request.path == "/v1/a b"
    assert request.query.getall("x") == ["1", "2"]
    assert request.query["y"] == "" and request.query["z"] == "+ "
    assert request.version == HTTP_11 and request.host == "edge"


def test_responses_carry_no_content_type_without_a_body() -> None:
    assert "Content-Type" not in Response(204).headers
    assert json_response({"a": 1}).body == b'{"a": 1}'
