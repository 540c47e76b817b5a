"""Routes compiled from the `google.api.http` rules of service descriptors, and the router.

Every rule (and each of its `additional_bindings`, one level deep) becomes a :class:`Route`.
:class:`Router` indexes them by HTTP method, segment count and verb so that :meth:`Router.find`
tries only the few templates that can match. When several templates match, the most specific
wins: more literal segments, then a verb, then no `**`, then more segments, then the longer
literal prefix, then declaration order.

Errors: :class:`RouteNotFound` (no template matches the path) and :class:`MethodNotAllowed`
(a template matches, but not with this HTTP method; ``allowed`` lists the methods that would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor

from gateway.templates import PathTemplate, TemplateError

__all__ = [
    "Route",
    "RouteMatch",
    "RouteNotFound",
    "MethodNotAllowed",
    "Router",
    "compile_routes",
    "rules_of",
]

_PATTERNS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: PathTemplate
    method: MethodDescriptor
    body: str
    response_body: str

    @property
    def full_method(self) -> str:
        """The gRPC method path, ``/pkg.Service/Method``."""
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)


class RouteNotFound(Exception):
    """No route template matches the path."""


class MethodNotAllowed(Exception):
    """A route template matches the path, but none with the request's HTTP method."""

    def __init__(self, allowed: Iterable[str], message: str = "") -> None:
        self.allowed: tuple[str, ...] = tuple(sorted(set(allowed)))
        super().__init__(message or f"method not allowed; allowed: {', '.join(self.allowed)}")


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    variables: dict[str, str]


def rules_of(method: MethodDescriptor) -> list[tuple[str, str, str, str]]:
    """``(http_method, path, body, response_body)`` for the method's rule and its additional bindings.

    A method without a `google.api.http` option has none. A rule without a pattern, a custom
    pattern without a kind, or nested additional bindings raise ValueError.
    """
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    rules = [_binding(method, rule)]
    for extra in rule.additional_bindings:
        if len(extra.additional_bindings):
            raise ValueError(f"{method.full_name}: additional_bindings must not be nested")
        rules.append(_binding(method, extra))
    return rules


def _binding(method: MethodDescriptor, rule: http_pb2.HttpRule) -> tuple[str, str, str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError(f"{method.full_name}: google.api.http rule without a pattern")
    if kind == "custom":
        if not rule.custom.kind:
            raise ValueError(f"{method.full_name}: custom http pattern without a kind")
        http_method, path = str(rule.custom.kind).upper(), str(rule.custom.path)
    else:
        http_method, path = kind.upper(), str(getattr(rule, kind))
    return http_method, path, str(rule.body), str(rule.response_body)


def compile_routes(
    services: Iterable[ServiceDescriptor],
    *,
    include: Callable[[MethodDescriptor], bool] = lambda m: True,
) -> Router:
    """Routes for every rule of every method of `services` that `include` accepts.

    Raises ValueError (TemplateError for a bad template) naming the method when a rule cannot
    work: a bad template, a path variable or body/response_body naming no such field, or the
    same HTTP method and template bound twice.
    """
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            if not include(method):
                continue
            for http_method, path, body, response_body in rules_of(method):
                try:
                    template = PathTemplate.parse(path)
                except TemplateError as error:
                    raise TemplateError(f"{method.full_name}: {error}") from error
                _check_fields(method, template, body, response_body)
                routes.append(Route(http_method, template, method, body, response_body))
    return Router(routes)


def _check_fields(method: MethodDescriptor, template: PathTemplate, body: str, response_body: str) -> None:
    for variable in template.variables:
        message: Descriptor | None = method.input_type
        names = variable.split(".")
        for depth, name in enumerate(names):
            found: FieldDescriptor | None = None if message is None else message.fields_by_name.get(name)
            if found is None or _is_repeated(found):
                raise ValueError(
                    f"{method.full_name}: path variable {variable!r} is not a singular field "
                    f"of {method.input_type.full_name}"
                )
            message = found.message_type
            if depth < len(names) - 1 and message is None:
                raise ValueError(f"{method.full_name}: path variable {variable!r} goes through a scalar")
    if body not in ("", "*") and body not in method.input_type.fields_by_name:
        raise ValueError(f"{method.full_name}: body {body!r} is not a field of {method.input_type.full_name}")
    if response_body and response_body not in method.output_type.fields_by_name:
        raise ValueError(
            f"{method.full_name}: response_body {response_body!r} is not a field of "
            f"{method.output_type.full_name}"
        )


def _is_repeated(found: FieldDescriptor) -> bool:
    return bool(found.is_repeated)


@dataclass(frozen=True, slots=True)
class _Entry:
    rank: int  # 0 is the most specific
    route: Route


class Router:
    """Finds the route for an HTTP method and raw path; build with :func:`compile_routes`."""

    routes: tuple[Route, ...]

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        seen: dict[tuple[str, tuple[tuple[str, ...], str]], Route] = {}
        for route in self.routes:
            key = (route.http_method, route.template._shape)
            first = seen.setdefault(key, route)
            if first is not route:
                raise ValueError(
                    f"{route.http_method} {route.template.text} is bound by both "
                    f"{first.method.full_name} ({first.template.text}) and {route.method.full_name}"
                )
        order = sorted(
            range(len(self.routes)),
            key=lambda i: (tuple(-k for k in self.routes[i].template._specificity()), i),
        )
        # method -> (segment count, verb) -> entries, for templates without `**`;
        # method -> verb -> entries, for templates ending with `**`. Each tuple is in rank order.
        fixed: dict[str, dict[tuple[int, str], list[_Entry]]] = {}
        open_: dict[str, dict[str, list[_Entry]]] = {}
        for rank, i in enumerate(order):
            route = self.routes[i]
            template = route.template
            entry = _Entry(rank, route)
            if template._open:
                open_.setdefault(route.http_method, {}).setdefault(template.verb, []).append(entry)
            else:
                by_shape = fixed.setdefault(route.http_method, {})
                by_shape.setdefault((template._fixed, template.verb), []).append(entry)
        self._fixed = {m: {k: tuple(v) for k, v in d.items()} for m, d in fixed.items()}
        self._open = {m: {k: tuple(v) for k, v in d.items()} for m, d in open_.items()}

    def __repr__(self) -> str:
        return f"Router({len(self.routes)} routes)"

    def find(self, http_method: str, path: str) -> RouteMatch:
        """The most specific route for `http_method` whose template matches the raw `path`."""
        if not path.startswith("/"):
            raise RouteNotFound(f"no route for {path!r}")
        parts = path[1:].split("/")
        last = parts[-1]
        colon = last.rfind(":")
        verb = last[colon + 1 :] if colon > 0 else None
        verb_parts = [*parts[:-1], last[:colon]] if colon > 0 else parts
        found = self._find(http_method, parts, verb, verb_parts)
        if found is not None:
            return found
        allowed = [
            method
            for method in {*self._fixed, *self._open}
            if method != http_method and self._find(method, parts, verb, verb_parts) is not None
        ]
        if allowed:
            raise MethodNotAllowed(allowed, f"{http_method} is not allowed on {path}")
        raise RouteNotFound(f"no route for {path!r}")

    def _find(
        self, http_method: str, parts: list[str], verb: str | None, verb_parts: list[str]
    ) -> RouteMatch | None:
        best: RouteMatch | None = None
        best_rank = len(self.routes)
        count = len(parts)
        fixed = self._fixed.get(http_method)
        open_ = self._open.get(http_method)
        candidates: list[tuple[tuple[_Entry, ...], list[str]]] = []
        if fixed is not None:
            candidates.append((fixed.get((count, ""), ()), parts))
            if verb is not None:
                candidates.append((fixed.get((count, verb), ()), verb_parts))
        if open_ is not None:
            candidates.append((open_.get("", ()), parts))
            if verb is not None:
                candidates.append((open_.get(verb, ()), verb_parts))
        for entries, segments in candidates:
            for entry in entries:
                if entry.rank >= best_rank:
                    break
                variables = entry.route.template._match_parts(segments)
                if variables is not None:
                    best, best_rank = RouteMatch(entry.route, variables), entry.rank
                    break
        return best
