"""google.api.http path templates: parse once at start-up, match raw URL paths per request.

Grammar (google/api/http.proto)::

    Template  = "/" Segments [ Verb ] ;
    Segments  = Segment { "/" Segment } ;
    Segment   = "*" | "**" | LITERAL | Variable ;
    Variable  = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb      = ":" LITERAL ;

`**` may appear once, as the last segment of the template (alone or ending the last variable).
The verb is the text after the last ':' of the last segment (grpc-gateway); a variable must be a
whole segment. Matching works on the raw, percent-encoded path: an empty segment (``//`` or a
trailing ``/``) matches only `**`; literals match the segment as written or percent-decoded;
single-segment variables are fully decoded, multi-segment ones keep ``%2F``. A malformed escape or
invalid UTF-8 makes the path not match.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Final

__all__ = ["PathTemplate", "TemplateError"]

_LITERAL: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()+,;:@]|%[0-9A-Fa-f]{2})+")
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPE: Final = re.compile(r"%[0-9A-Fa-f]{2}")
_SLASH_ESCAPE: Final = re.compile(r"(%2[Ff])")

_STAR: Final = "*"
_DOUBLE_STAR: Final = "**"


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


@dataclass(frozen=True, slots=True)
class _Variable:
    field_path: str
    start: int
    end: int | None  # None: runs to the end of the path (the variable ends with `**`)
    multi: bool  # bound to more than one segment: decode all but %2F


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template; build with :meth:`parse`."""

    text: str
    verb: str
    variables: tuple[str, ...]
    # Compiled form. Segment tokens are "*", "**" or a literal (literals never contain '*').
    _segments: tuple[str, ...] = field(repr=False, compare=False)
    _bindings: tuple[_Variable, ...] = field(repr=False, compare=False)
    _literals: tuple[tuple[int, str, str], ...] = field(repr=False, compare=False)
    _stars: tuple[int, ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Parse `text`; raise :class:`TemplateError` naming the problem."""
        if not isinstance(text, str):
            raise TemplateError(f"template must be a string, not {type(text).__name__}")
        if not text.startswith("/"):
            raise TemplateError(f"template {text!r} must start with '/'")
        segments, bindings, verb = _scan(text)
        _check(text, segments, bindings)
        literals = tuple(
            (i, s, _unescape(s, keep_slash=False) or s)
            for i, s in enumerate(segments)
            if s not in (_STAR, _DOUBLE_STAR)
        )
        return cls(
            text=text,
            verb=verb,
            variables=tuple(b.field_path for b in bindings),
            _segments=tuple(segments),
            _bindings=tuple(bindings),
            _literals=literals,
            _stars=tuple(i for i, s in enumerate(segments) if s == _STAR),
        )

    def match(self, path: str) -> dict[str, str] | None:
        """Variables bound by the raw (percent-encoded) `path`, or None if it does not match."""
        if not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        if self.verb:
            last = parts[-1]
            colon = last.rfind(":")
            if colon <= 0 or last[colon + 1 :] != self.verb:
                return None
            parts[-1] = last[:colon]
        return self._match_parts(parts)

    def openapi_path(self) -> str:
        """The path with each variable as ``{field.path}`` (OpenAPI style), e.g. ``/v1/{name}:cancel``."""
        out: list[str] = []
        i = 0
        for binding in self._bindings:
            out.extend(self._segments[i : binding.start])
            out.append("{" + binding.field_path + "}")
            i = len(self._segments) if binding.end is None else binding.end
        out.extend(self._segments[i:])
        return "/" + "/".join(out) + (":" + self.verb if self.verb else "")

    def literal_prefix_length(self) -> int:
        """How many segments at the start are literals (inside variables too)."""
        count = 0
        for segment in self._segments:
            if segment in (_STAR, _DOUBLE_STAR):
                break
            count += 1
        return count

    # -- used by gateway.routes; not part of the public surface --------------------------------

    @property
    def _shape(self) -> tuple[tuple[str, ...], str]:
        """What the template matches, independent of variable names (for duplicate detection)."""
        return (tuple(lit if lit in (_STAR, _DOUBLE_STAR) else d for lit, d in self._decoded()), self.verb)

    def _decoded(self) -> list[tuple[str, str]]:
        decoded = {i: d for i, _, d in self._literals}
        return [(s, decoded.get(i, s)) for i, s in enumerate(self._segments)]

    @property
    def _open(self) -> bool:
        return bool(self._segments) and self._segments[-1] == _DOUBLE_STAR

    @property
    def _fixed(self) -> int:
        """Segments a path must have (at least, when the template ends with `**`)."""
        return len(self._segments) - 1 if self._open else len(self._segments)

    def _specificity(self) -> tuple[int, int, int, int, int]:
        """Bigger is more specific: literals, verb, fewer `**`, more segments, literal prefix."""
        return (
            len(self._literals),
            1 if self.verb else 0,
            0 if self._open else 1,
            self._fixed,
            self.literal_prefix_length(),
        )

    def _match_parts(self, parts: list[str]) -> dict[str, str] | None:
        """Match path segments with the verb already removed from the last one."""
        count = len(parts)
        fixed = self._fixed
        if count != fixed and (count < fixed or not self._open):
            return None
        for i, raw, decoded in self._literals:
            segment = parts[i]
            if segment != raw and ("%" not in segment or _unescape(segment, keep_slash=False) != decoded):
                return None
        for i in self._stars:
            if not parts[i]:
                return None
        values: dict[str, str] = {}
        for binding in self._bindings:
            if binding.multi:
                value = _unescape("/".join(parts[binding.start : binding.end]), keep_slash=True)
            else:
                value = _unescape(parts[binding.start], keep_slash=False)
            if value is None:
                return None
            values[binding.field_path] = value
        return values


def _scan(text: str) -> tuple[list[str], list[_Variable], str]:
    """Segment tokens, variables and verb of `text` (which starts with '/')."""
    segments: list[str] = []
    bindings: list[_Variable] = []
    pos, size = 1, len(text)
    while True:
        if text.startswith("{", pos):
            close = text.find("}", pos)
            if close < 0:
                raise TemplateError(f"template {text!r}: unbalanced '{{' at {pos}")
            inner = text[pos + 1 : close]
            if "{" in inner:
                raise TemplateError(f"template {text!r}: nested variable at {pos}")
            bindings.append(_parse_variable(text, inner, segments))
            pos = close + 1
            if pos == size:
                return segments, bindings, ""
            if text[pos] == ":":
                return segments, bindings, _parse_verb(text, text[pos + 1 :])
            if text[pos] != "/":
                problem = "unbalanced '}'" if text[pos] == "}" else "a variable must be a whole segment"
                raise TemplateError(f"template {text!r}: {problem}")
            pos += 1
            continue
        slash = text.find("/", pos)
        if slash >= 0:
            segments.append(_parse_segment(text, text[pos:slash]))
            pos = slash + 1
            continue
        raw, verb = text[pos:], ""
        colon = raw.rfind(":")
        if colon == 0:
            raise TemplateError(f"template {text!r}: empty segment before the verb")
        if colon > 0:
            raw, verb = raw[:colon], _parse_verb(text, raw[colon + 1 :])
        segments.append(_parse_segment(text, raw))
        return segments, bindings, verb


def _parse_verb(text: str, verb: str) -> str:
    if not verb:
        raise TemplateError(f"template {text!r}: empty verb")
    if ":" in verb or not _LITERAL.fullmatch(verb):
        raise TemplateError(f"template {text!r}: bad verb {verb!r}")
    return verb


def _parse_segment(text: str, raw: str) -> str:
    if "{" in raw or "}" in raw:
        problem = "unbalanced '}'" if "{" not in raw else "a variable must be a whole segment"
        raise TemplateError(f"template {text!r}: {problem}")
    if not raw:
        raise TemplateError(f"template {text!r}: empty segment")
    if raw in (_STAR, _DOUBLE_STAR) or _LITERAL.fullmatch(raw):
        return raw
    raise TemplateError(f"template {text!r}: bad segment {raw!r}")


def _parse_variable(text: str, inner: str, segments: list[str]) -> _Variable:
    field_path, equals, sub = inner.partition("=")
    if not all(_IDENT.fullmatch(part) for part in field_path.split(".")):
        raise TemplateError(f"template {text!r}: bad field path {field_path!r}")
    if equals and not sub:
        raise TemplateError(f"template {text!r}: variable {field_path!r} has an empty template")
    parts = [_parse_segment(text, s) for s in sub.split("/")] if equals else [_STAR]
    start = len(segments)
    segments.extend(parts)
    open_ended = parts[-1] == _DOUBLE_STAR
    return _Variable(
        field_path=field_path,
        start=start,
        end=None if open_ended else len(segments),
        multi=len(parts) > 1 or open_ended,
    )


def _check(text: str, segments: list[str], bindings: list[_Variable]) -> None:
    if _DOUBLE_STAR in segments[:-1]:
        raise TemplateError(f"template {text!r}: '**' must be the last segment")
    names = [b.field_path for b in bindings]
    for name in names:
        if names.count(name) > 1:
            raise TemplateError(f"template {text!r}: variable {name!r} is bound twice")
        clash = next((other for other in names if other.startswith(name + ".")), None)
        if clash is not None:
            raise TemplateError(f"template {text!r}: variables {name!r} and {clash!r} overlap")


def _unescape(raw: str, *, keep_slash: bool) -> str | None:
    """Percent-decode `raw` (UTF-8); None for a malformed escape or invalid UTF-8."""
    if "%" not in raw:
        return raw
    if raw.count("%") != len(_ESCAPE.findall(raw)):
        return None
    pieces = _SLASH_ESCAPE.split(raw) if keep_slash else [raw]
    try:
        return "".join(
            piece if i % 2 else urllib.parse.unquote_to_bytes(piece).decode("utf-8")
            for i, piece in enumerate(pieces)
        )
    except UnicodeDecodeError:
        return None
