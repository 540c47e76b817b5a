"""List filters (AIP-160 subset) and orderings (AIP-132), parsed once for every service.

A filter is comparisons joined by ``AND``: ``state = PAID AND create_time > "2025-01-01T00:00:00Z"``.
Each service declares its filterable fields as a `Fields` mapping (name -> `FieldSpec`);
a term naming another field, an operator the field does not allow, or a value its parser
refuses is INVALID_ARGUMENT with a violation on ``filter``. The result is a list of typed
`Term`s the store turns into ``WHERE`` clauses with `kit.sql.filter_conditions`; user text
never reaches SQL.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.kit.domain_errors import FieldViolation, InvalidArgument

__all__ = [
    "EQUALITY",
    "ORDERED",
    "FieldSpec",
    "Fields",
    "Ordering",
    "Term",
    "enum_value",
    "parse_filter",
    "parse_order_by",
    "text_value",
    "timestamp_value",
]

EQUALITY = ("=", "!=")
ORDERED = ("=", "!=", "<", "<=", ">", ">=")
_MAX_FILTER_CHARS = 1000
_TERM = re.compile(r'\s*([a-z_][a-z0-9_.]*)\s*(<=|>=|!=|=|<|>|:)\s*("(?:[^"\\]|\\.)*"|[^\s"]+)\s*')


@dataclass(frozen=True, slots=True)
class FieldSpec:
    parse: Callable[[str], object]
    """Turns the term's value text into the value the store compares with; ValueError refuses it."""
    operators: Sequence[str] = EQUALITY


Fields = Mapping[str, FieldSpec]


@dataclass(frozen=True, slots=True)
class Term:
    field: str
    operator: str
    value: object


@dataclass(frozen=True, slots=True)
class Ordering:
    field: str
    descending: bool


def _invalid(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field.upper()}_INVALID",
        "{field} is invalid: {why}",
        violations=[FieldViolation(field, why)],
        field=field,
        why=why,
    )


def text_value(raw: str) -> str:
    if not raw or len(raw) > 320:
        raise ValueError("must be 1 to 320 characters")
    return raw


def timestamp_value(raw: str) -> dt.datetime:
    """An RFC 3339 timestamp with an offset, e.g. ``2025-01-01T00:00:00Z``."""
    value = dt.datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise ValueError("needs a time zone offset, e.g. Z")
    return value.astimezone(dt.UTC)


def enum_value(*names: str, prefix: str = "STATE_") -> Callable[[str], str]:
    """A parser accepting `names` (upper case), with or without `prefix`, in any case."""

    def parse(raw: str) -> str:
        value = raw.upper().removeprefix(prefix)
        if value not in names:
            raise ValueError(f"must be one of {', '.join(names)}")
        return value

    return parse


def parse_filter(text: str, fields: Fields) -> list[Term]:
    """The terms of `text` (empty for an empty filter), checked against `fields`."""
    if len(text) > _MAX_FILTER_CHARS:
        raise _invalid("filter", f"must be at most {_MAX_FILTER_CHARS} characters")
    terms: list[Term] = []
    for raw in (t for t in re.split(r"\s+AND\s+", text.strip()) if t.strip()):
        match = _TERM.fullmatch(raw)
        if match is None:
            raise _invalid("filter", f"cannot read {raw.strip()[:80]!r}; use field = value joined by AND")
        name, operator, value = match.groups()
        spec = fields.get(name)
        if spec is None:
            raise _invalid("filter", f"cannot filter on {name!r}; use one of {', '.join(sorted(fields))}")
        if operator not in spec.operators:
            raise _invalid("filter", f"{name} allows {' '.join(spec.operators)}, not {operator}")
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        try:
            terms.append(Term(name, operator, spec.parse(value)))
        except ValueError as refused:
            raise _invalid("filter", f"{name}: {refused}") from None
    return terms


def parse_order_by(text: str, fields: Sequence[str], *, default: Ordering) -> Ordering:
    """One of `fields`, optionally followed by ``asc`` or ``desc``; empty means `default`."""
    words = text.split()
    if not words:
        return default
    if (
        len(words) > 2
        or words[0] not in fields
        or (len(words) == 2 and words[1].lower() not in ("asc", "desc"))
    ):
        raise _invalid("order_by", f"must be one of {', '.join(fields)}, optionally followed by asc or desc")
    return Ordering(words[0], len(words) == 2 and words[1].lower() == "desc")
