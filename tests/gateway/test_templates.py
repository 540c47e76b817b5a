"""Tests of gateway.templates: parsing, matching, percent-decoding, and malformed templates."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import templates
from gateway.templates import PathTemplate, TemplateError


def test_all_lists_the_public_names() -> None:
    public = {name for name in vars(templates) if not name.startswith("_")} - {
        "annotations",
        "dataclass",
        "field",
        "Final",
        "re",
        "urllib",
    }
    assert set(templates.__all__) == public


@pytest.mark.parametrize(
    ("text", "verb", "variables", "openapi", "prefix"),
    [
        ("/v1/orders", "", (), "/v1/orders", 2),
        ("/v1/{name=orders/*}", "", ("name",), "/v1/{name}", 2),
        ("/v1/{name=orders/*}:cancel", "cancel", ("name",), "/v1/{name}:cancel", 2),
        ("/v1/{name}", "", ("name",), "/v1/{name}", 1),
        ("/v1/{name=*}", "", ("name",), "/v1/{name}", 1),
        ("/v1/{user.name=users/*}", "", ("user.name",), "/v1/{user.name}", 2),
        ("/v1/{a.b}/{c}", "", ("a.b", "c"), "/v1/{a.b}/{c}", 1),
        ("/v1/auth:login", "login", (), "/v1/auth:login", 2),
        ("/v1/a:b:c", "c", (), "/v1/a:b:c", 2),
        ("/v1/x:y/z", "", (), "/v1/x:y/z", 3),
        ("/v1/*/items", "", (), "/v1/*/items", 1),
        ("/v1/**", "", (), "/v1/**", 1),
        ("/v1/**:undelete", "undelete", (), "/v1/**:undelete", 1),
        ("/v1/{name=files/**}", "", ("name",), "/v1/{name}", 2),
        ("/v1/{name=**}:get", "get", ("name",), "/v1/{name}:get", 1),
        ("/v1/{parent=accounts/*}/entries", "", ("parent",), "/v1/{parent}/entries", 2),
        ("/.well-known/jwks.json", "", (), "/.well-known/jwks.json", 2),
        ("/v1/a%20b", "", (), "/v1/a%20b", 2),
    ],
    ids=[
        "literal",
        "var-segments",
        "var-verb",
        "var-short",
        "var-star",
        "nested-field",
        "two-vars",
        "literal-verb",
        "literal-colons-verb",
        "colon-inside-path",
        "star",
        "double-star",
        "double-star-verb",
        "var-double-star",
        "var-only-double-star-verb",
        "var-then-literal",
        "dots-and-dashes",
        "encoded-literal",
    ],
)
def test_parse(text: str, verb: str, variables: tuple[str, ...], openapi: str, prefix: int) -> None:
    template = PathTemplate.parse(text)
    assert template.text == text
    assert template.verb == verb
    assert template.variables == variables
    assert template.openapi_path() == openapi
    assert template.literal_prefix_length() == prefix


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("/v1/orders", "/v1/orders", {}),
        ("/v1/orders", "/v1/orders/", None),
        ("/v1/orders", "/v1/order", None),
        ("/v1/orders", "v1/orders", None),
        ("/v1/orders", "/v1//orders", None),
        ("/v1/orders", "/v1/%6Frders", {}),
        ("/v1/{name=orders/*}", "/v1/orders/abc", {"name": "orders/abc"}),
        ("/v1/{name=orders/*}", "/v1/orders/", None),
        ("/v1/{name=orders/*}", "/v1/orders/a/b", None),
        ("/v1/{name=orders/*}", "/v1/users/abc", None),
        ("/v1/{name=orders/*}", "/v1/orders/abc:cancel", {"name": "orders/abc:cancel"}),
        ("/v1/{name=orders/*}:cancel", "/v1/orders/abc:cancel", {"name": "orders/abc"}),
        ("/v1/{name=orders/*}:cancel", "/v1/orders/abc", None),
        ("/v1/{name=orders/*}:cancel", "/v1/orders/abc:fulfill", None),
        ("/v1/{name=orders/*}:cancel", "/v1/orders/:cancel", None),
        ("/v1/{name=orders/*}:cancel", "/v1/orders/a:b:cancel", {"name": "orders/a:b"}),
        ("/v1/{name=orders/*}:cancel", "/v1/orders/abc%3Acancel", None),
        ("/v1/{name}", "/v1/a%2Fb", {"name": "a/b"}),
        ("/v1/{name}", "/v1/caf%C3%A9%20au%20lait", {"name": "café au lait"}),
        ("/v1/{name}", "/v1/a+b", {"name": "a+b"}),
        ("/v1/{name}", "/v1/%zz", None),
        ("/v1/{name}", "/v1/%4", None),
        ("/v1/{name}", "/v1/%FF", None),
        ("/v1/{name=orders/*}", "/v1/orders/a%2Fb%20c", {"name": "orders/a%2Fb c"}),
        ("/v1/{name=orders/*}", "/v1/orders/a%2fb", {"name": "orders/a%2fb"}),
        ("/v1/{a.b}", "/v1/x", {"a.b": "x"}),
        ("/v1/{a.b}/{c}", "/v1/x/y", {"a.b": "x", "c": "y"}),
        ("/v1/*/items", "/v1/abc/items", {}),
        ("/v1/*/items", "/v1//items", None),
        ("/v1/**", "/v1", {}),
        ("/v1/**", "/v1/a/b/c", {}),
        ("/v1/{name=files/**}", "/v1/files", {"name": "files"}),
        ("/v1/{name=files/**}", "/v1/files/a/b%2Fc/d%20e", {"name": "files/a/b%2Fc/d e"}),
        ("/v1/{name=**}:get", "/v1/a/b:get", {"name": "a/b"}),
        ("/v1/{name=**}:get", "/v1/a/b", None),
        ("/v1/auth:login", "/v1/auth:login", {}),
        ("/v1/auth:login", "/v1/auth", None),
        ("/v1/auth:login", "/v1/auth:logout", None),
        ("/v1/auth:login", "/v1/authx:login", None),
        ("/v1/users", "/v1/users:listIdentities", None),
        ("/v1/{parent=accounts/*}/entries", "/v1/accounts/a1/entries", {"parent": "accounts/a1"}),
    ],
    ids=[
        "literal",
        "trailing-slash",
        "literal-differs",
        "no-leading-slash",
        "empty-segment",
        "encoded-unreserved-literal",
        "var-segments",
        "star-needs-a-segment",
        "too-many-segments",
        "var-literal-differs",
        "colon-without-template-verb",
        "verb",
        "verb-missing",
        "verb-differs",
        "verb-on-empty-segment",
        "verb-after-last-colon",
        "encoded-colon-is-not-a-verb",
        "single-segment-decodes-slash",
        "single-segment-utf8",
        "plus-is-not-space",
        "malformed-escape",
        "truncated-escape",
        "invalid-utf8",
        "multi-segment-keeps-slash",
        "multi-segment-keeps-lower-slash",
        "nested-field",
        "two-vars",
        "star",
        "star-empty",
        "double-star-zero",
        "double-star-many",
        "var-double-star-zero",
        "var-double-star-many",
        "var-double-star-verb",
        "var-double-star-verb-missing",
        "literal-verb",
        "literal-verb-missing",
        "literal-verb-differs",
        "literal-verb-literal-differs",
        "verb-not-a-literal",
        "var-then-literal",
    ],
)
def test_match(text: str, path: str, expected: dict[str, str] | None) -> None:
    assert PathTemplate.parse(text).match(path) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "must start with '/'"),
        ("v1/orders", "must start with '/'"),
        ("/", "empty segment"),
        ("/v1//orders", "empty segment"),
        ("/v1/orders/", "empty segment"),
        ("/v1/{name", "unbalanced '{'"),
        ("/v1/name}", "unbalanced '}'"),
        ("/v1/{name}}", "unbalanced '}'"),
        ("/v1/{a={b}}", "nested variable"),
        ("/v1/x{name}", "whole segment"),
        ("/v1/{name}x", "whole segment"),
        ("/v1/{}", "bad field path"),
        ("/v1/{a..b}", "bad field path"),
        ("/v1/{1a}", "bad field path"),
        ("/v1/{a=}", "empty template"),
        ("/v1/{a=b//c}", "empty segment"),
        ("/v1/**/x", "'**' must be the last segment"),
        ("/v1/{a=**}/x", "'**' must be the last segment"),
        ("/v1/**/**", "'**' must be the last segment"),
        ("/v1/{a}/{a}", "bound twice"),
        ("/v1/{a}/{a.b}", "overlap"),
        ("/v1/orders:", "empty verb"),
        ("/v1/:cancel", "empty segment before the verb"),
        ("/v1/{name}:", "empty verb"),
        ("/v1/{name}:a/b", "bad verb"),
        ("/v1/***", "bad segment"),
        ("/v1/a b", "bad segment"),
        ("/v1/a?b", "bad segment"),
        ("/v1/a%zz", "bad segment"),
        ("/v1/a=b", "bad segment"),
    ],
    ids=[
        "empty",
        "relative",
        "root-only",
        "double-slash",
        "trailing-slash",
        "unclosed-brace",
        "stray-close-brace",
        "extra-close-brace",
        "nested-variable",
        "text-before-variable",
        "text-after-variable",
        "empty-field-path",
        "empty-ident",
        "ident-starts-with-digit",
        "empty-variable-template",
        "empty-variable-segment",
        "double-star-not-last",
        "var-double-star-not-last",
        "two-double-stars",
        "duplicate-variable",
        "overlapping-variables",
        "empty-literal-verb",
        "verb-without-segment",
        "empty-variable-verb",
        "slash-in-verb",
        "triple-star",
        "space",
        "query-mark",
        "malformed-escape",
        "equals-outside-variable",
    ],
)
def test_malformed(text: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem.replace("*", r"\*").replace("{", r"\{")):
        PathTemplate.parse(text)


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


_TEMPLATE_ALPHABET = "/{}=*:.abcxyz_09%-~ ?"


@given(st.text(alphabet=st.sampled_from(_TEMPLATE_ALPHABET), max_size=30) | st.text(max_size=30))
def test_parse_raises_only_template_error(text: str) -> None:
    try:
        template = PathTemplate.parse(text)
    except TemplateError:
        return
    assert template.text == text
    assert template.openapi_path().startswith("/")


_LITERALS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~", min_size=1)
_VALUES = st.text(min_size=1)


@given(literals=st.lists(_LITERALS, min_size=1, max_size=5), verb=st.one_of(st.just(""), _LITERALS))
def test_literal_template_matches_its_own_path(literals: list[str], verb: str) -> None:
    path = "/" + "/".join(literals) + (":" + verb if verb else "")
    template = PathTemplate.parse(path)
    assert template.verb == verb
    assert template.match(path) == {}
    assert template.match(path + "/x") is None


@given(
    literals=st.lists(_LITERALS, min_size=1, max_size=3),
    value=_VALUES,
    tail=st.lists(_VALUES, max_size=3),
)
def test_variables_round_trip_through_percent_encoding(
    literals: list[str], value: str, tail: list[str]
) -> None:
    prefix = "/" + "/".join(literals)
    single = PathTemplate.parse(prefix + "/{a.b}:go")
    assert single.match(prefix + "/" + urllib.parse.quote(value, safe="") + ":go") == {"a.b": value}
    multi = PathTemplate.parse(prefix + "/{name=x/**}")
    encoded = [urllib.parse.quote(part, safe="") for part in [value, *tail]]
    got = multi.match(prefix + "/x/" + "/".join(encoded))
    assert got == {"name": "x/" + "/".join(part.replace("/", "%2F") for part in [value, *tail])}
