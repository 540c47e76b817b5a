"""Every resource-name and id validator refuses what only looks like an id.

A property test over ids the validators accept, each corrupted one way: a trailing newline
(``re.match(r"^...$")`` matched before it), a newline or NUL inside, or one character swapped
for a non-ASCII look-alike (Cyrillic letters, fullwidth letters and digits, U+0660 Arabic-Indic
digits, which ``\\d`` matches, a Unicode hyphen). The domain validators are reached through
their public use cases, with storage that fails the test if it is ever reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from services.kit.domain_errors import InvalidArgument
from services.kit.idempotency import key_problems
from services.kit.money import Money
from services.kit.names import chosen_id_problems, resource_id
from services.notifications.domain import Notifications
from services.orders.domain import NewLine, Orders

_CYRILLIC = {
    "a": "\u0430",
    "c": "\u0441",
    "e": "\u0435",
    "o": "\u043e",
    "p": "\u0440",
    "x": "\u0445",
    "y": "\u0443",
}


def _look_alikes(char: str) -> list[str]:
    if char.isdigit():
        return [chr(0xFF10 + int(char)), chr(0x0660 + int(char))]  # fullwidth, Arabic-Indic
    if char == "-":
        return ["\u2010", "\u2212"]  # hyphen, minus sign
    found = [chr(0xFF41 + ord(char.lower()) - ord("a"))]  # fullwidth letter
    return found + ([_CYRILLIC[char.lower()]] if char.lower() in _CYRILLIC else [])


@st.composite
def _corrupted(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    text = draw(valid)
    index = draw(st.integers(0, len(text) - 1))
    kind = draw(st.sampled_from(["trailing-newline", "newline", "nul", "look-alike"]))
    if kind == "trailing-newline":
        return text + "\n"
    if kind in ("newline", "nul"):
        return text[:index] + ("\n" if kind == "newline" else "\x00") + text[index:]
    return text[:index] + draw(st.sampled_from(_look_alikes(text[index]))) + text[index + 1 :]


_IDS = st.from_regex(r"[a-z][a-z0-9-]{3,40}", fullmatch=True)
_SKUS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,40}", fullmatch=True)
_REQUEST_IDS = st.uuids(version=4).map(str)


class _Reached(Exception):
    """The validator let the value through: the use case went on to storage."""


@contextmanager
def _storage() -> Iterator[Any]:
    raise _Reached
    yield  # pragma: no cover - never reached


def _anyone(_owner: str, _resource: str) -> None:
    """An owner check that admits every caller: the validators run before it matters."""


_LINE = NewLine("SKU-1", 1, Money("EUR", 100))
_ORDERS = Orders(_storage)
_NOTIFICATIONS = Notifications(_storage, address_policy=lambda url: None)


def _accepts(check: Callable[[], object]) -> bool:
    try:
        result = check()
    except InvalidArgument:
        return False
    except _Reached:
        return True
    return not (isinstance(result, list) and result)  # a list of problems, or a parsed id


def _resource_names(value: str) -> dict[str, Callable[[], object]]:
    collections = [
        "orders",
        "users",
        "accounts",
        "payments",
        "webhooks",
        "deliveries",
        "templates",
        "clients",
    ]
    return {c: (lambda c=c: resource_id(f"{c}/{value}", c)) for c in collections}  # type: ignore[misc]


def _id_validators(value: str) -> dict[str, Callable[[], object]]:
    return {
        **_resource_names(value),
        "chosen-id": lambda: chosen_id_problems(value, field="id"),
        "order_id": lambda: _ORDERS.create("users/u", [_LINE], value, "", _anyone),
        "webhook_id": lambda: _NOTIFICATIONS.create_webhook(
            "users/u", "https://example.com/hook", [], "", webhook_id=value, check_owner=_anyone
        ),
    }


def _request_id_validators(value: str) -> dict[str, Callable[[], object]]:
    return {
        "kit": lambda: key_problems(value),
        "orders": lambda: _ORDERS.create("users/u", [_LINE], "", value, _anyone),
        "notifications": lambda: _NOTIFICATIONS.create_webhook(
            "users/u", "https://example.com/hook", [], "", request_id=value, check_owner=_anyone
        ),
    }


@given(valid=_IDS, corrupted=_corrupted(_IDS))
def test_every_id_validator_refuses_newlines_nuls_and_look_alikes(valid: str, corrupted: str) -> None:
    assert {
        name: _accepts(check) for name, check in _id_validators(valid).items() if not _accepts(check)
    } == {}
    accepted = [name for name, check in _id_validators(corrupted).items() if _accepts(check)]
    assert accepted == [], f"{corrupted!r} accepted by {accepted}"


@given(valid=_REQUEST_IDS, corrupted=_corrupted(_REQUEST_IDS))
def test_every_request_id_validator_refuses_newlines_nuls_and_look_alikes(valid: str, corrupted: str) -> None:
    assert all(_accepts(check) for check in _request_id_validators(valid).values())
    accepted = [name for name, check in _request_id_validators(corrupted).items() if _accepts(check)]
    assert accepted == [], f"{corrupted!r} accepted by {accepted}"


@st.composite
def _padded_or_corrupted(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    if draw(st.booleans()):
        return draw(_corrupted(valid))
    text, pad = draw(valid), draw(st.sampled_from([" ", "\t", "\u00a0", "\u3000"]))
    return draw(st.sampled_from([pad + text, text + pad, pad]))


def _sku_accepted(sku: str) -> bool:
    return _accepts(lambda: _ORDERS.create("users/u", [NewLine(sku, 1, Money("EUR", 100))], "", "", _anyone))


@given(valid=_SKUS, corrupted=_padded_or_corrupted(_SKUS))
def test_the_sku_validator_refuses_padding_newlines_nuls_and_look_alikes(valid: str, corrupted: str) -> None:
    assert _sku_accepted(valid)
    assert not _sku_accepted(corrupted), f"SKU {corrupted!r} accepted"
