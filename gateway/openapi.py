"""An OpenAPI 3.1 document from the same routes the gateway serves.

Everything comes from descriptors: paths from the route templates, parameters and bodies from the
request messages, schemas in proto3 JSON shapes (64-bit integers as strings, well-known types as
their JSON forms), `required`/`readOnly` from `google.api.field_behavior`, and descriptions from the
proto comments when the descriptors carry them. Errors are `google.rpc.Status`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
)

from gateway.descriptors import source_comments
from gateway.plans import raw_body_field, raw_reply_field
from gateway.routes import Route, Router

__all__ = [
    "CommentSource",
    "PublicPredicate",
    "STATUS_SCHEMA",
    "openapi_document",
]

CommentSource = Callable[[str], str]
"""The leading comment of a descriptor by full name ("pkg.Msg.field"), or "" when unknown."""
PublicPredicate = Callable[[MethodDescriptor], "bool | None"]
"""True when a method needs no bearer token (its operation says ``security: []``), False when
it needs one, None when nobody said (no ``security`` at all: a foreign service's methods)."""

STATUS_NAME = "google.rpc.Status"
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The error: a gRPC status code, a message, and typed details.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "required": ["@type"],
                "additionalProperties": True,
            },
        },
    },
    "required": ["code", "details"],
}

_FIELD_BEHAVIOR = "google.api.field_behavior"
_QUERY_DEPTH = 2
_PATH_PARAM = re.compile(r"\{([^{}]+)\}")
_VARIABLE = re.compile(r"\{([^{}=]+)(?:=([^{}]*))?\}")
_I = FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _I.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _I.TYPE_FLOAT: {"type": "number", "format": "float"},
    _I.TYPE_INT32: {"type": "integer", "format": "int32"},
    _I.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _I.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _I.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    _I.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    _I.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _I.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _I.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _I.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    _I.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    _I.TYPE_BOOL: {"type": "boolean"},
    _I.TYPE_STRING: {"type": "string"},
    _I.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_ANY_OBJECT: dict[str, Any] = {
    "type": "object",
    "properties": {"@type": {"type": "string"}},
    "required": ["@type"],
    "additionalProperties": True,
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": _ANY_OBJECT,
    "google.protobuf.DoubleValue": {"type": ["number", "null"], "format": "double"},
    "google.protobuf.FloatValue": {"type": ["number", "null"], "format": "float"},
    "google.protobuf.Int64Value": {"type": ["string", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "minimum": 0},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}
# Well-known messages a query parameter can carry (as their JSON string or scalar form).
_HTTP_BODY = "google.api.HttpBody"
_QUERY_WELL_KNOWN = frozenset(_WELL_KNOWN) - {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
}
_BEARER = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


def _no_token_declared(method: MethodDescriptor) -> bool | None:
    return None


def openapi_document(
    router: Router,
    *,
    title: str,
    version: str,
    servers: Sequence[str] = ("/",),
    success_status: Callable[[Route], int],
    comments: CommentSource | None = None,
    is_public: PublicPredicate = _no_token_declared,
    license: Mapping[str, str] | None = None,
    forwarded_headers: Callable[[Route], frozenset[str]] = lambda route: frozenset(),
    response_headers: Callable[[Route], frozenset[str]] = lambda route: frozenset(),
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `router`'s routes (a JSON-ready dict).

    `comments` gives descriptions by full name; without it, comments are read from the descriptors'
    own source info when their files kept it (generated `_pb2` modules usually do not).
    `license` is ``info.license`` (``{"name": ..., "identifier": <SPDX>}``); without it the
    document claims none, as it should for APIs whose licence the edge cannot know.
    `forwarded_headers` names each route's request headers passed to the method (documented
    as header parameters), `response_headers` the metadata it may answer as headers
    (documented on its success, but ``x-http-code``, which picks the status).
    """
    builder = _Builder(comments or _source_comments(router.routes), forwarded_headers, response_headers)
    return builder.document(
        router,
        title=title,
        version=version,
        servers=servers,
        success_status=success_status,
        is_public=is_public,
        license=license,
    )


class _Builder:
    def __init__(
        self,
        comments: CommentSource,
        forwarded_headers: Callable[[Route], frozenset[str]],
        response_headers: Callable[[Route], frozenset[str]],
    ) -> None:
        self.comment = comments
        self.forwarded_headers = forwarded_headers
        self.response_headers = response_headers
        self.schemas: dict[str, dict[str, Any]] = {STATUS_NAME: STATUS_SCHEMA}

    def document(
        self,
        router: Router,
        *,
        title: str,
        version: str,
        servers: Sequence[str],
        success_status: Callable[[Route], int],
        is_public: PublicPredicate,
        license: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        tags: dict[str, dict[str, Any]] = {}
        service_names = _service_names(router.routes)
        operation_ids: set[str] = set()
        for route in router.routes:
            service = route.method.containing_service
            tag = service_names[service.full_name]
            if tag not in tags:
                tags[tag] = {"name": tag, **self._described(service.full_name)}
            operation = self.operation(route, tag, success_status(route), public=is_public(route.method))
            operation["operationId"] = _unique(f"{tag}_{route.method.name}", operation_ids)
            path, parameters = self.path_of(route, paths)
            operation["parameters"] = parameters + operation["parameters"]
            if not operation["parameters"]:
                del operation["parameters"]
            paths.setdefault(path, {})[route.http_method.lower()] = operation
        info: dict[str, Any] = {"title": title, "version": version}
        if license:
            info["license"] = dict(license)
        return {
            "openapi": "3.1.0",
            "info": info,
            "servers": [{"url": url} for url in servers],
            "tags": list(tags.values()),
            "paths": paths,
            "components": {
                "schemas": dict(sorted(self.schemas.items())),
                "securitySchemes": {"bearerAuth": dict(_BEARER)},
                "responses": {name: dict(answer) for name, answer in _ERROR_RESPONSES.items()},
            },
        }

    def path_of(self, route: Route, paths: dict[str, dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
        """The OpenAPI path and its parameters.

        A variable bound to a pattern is expanded (`/v1/{name=orders/*}` -> `/v1/orders/{order}`):
        `/v1/{name}` would hide every other `/v1/{name=<collection>/*}` and invite clients to send
        the slash percent-encoded, which the template does not match.
        """
        path = route.template.openapi_path()
        fields = {name: name for name in route.template.variables}
        if _has_patterns(route.template.text) or route.http_method.lower() in paths.get(path, {}):
            path, fields = _expanded(route.template.text, route.template.verb)
        parameters = []
        for name in _PATH_PARAM.findall(path):
            field_path = fields.get(name, name)
            parameter: dict[str, Any] = {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            }
            description = self._field_comment(route.method.input_type, field_path)
            if name != field_path:
                description = f"The `{name}` segment of `{field_path}`. {description}".strip()
            if description:
                parameter["description"] = description
            parameters.append(parameter)
        return path, parameters

    def operation(self, route: Route, tag: str, success: int, *, public: bool | None) -> dict[str, Any]:
        method = route.method
        operation: dict[str, Any] = {"tags": [tag]}
        comment = self.comment(method.full_name)
        if comment:
            operation["summary"] = comment.split("\n", 1)[0].strip()
            operation["description"] = comment
        operation["parameters"] = self.query_parameters(route) + [
            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
            for name in sorted(self.forwarded_headers(route))
        ]
        if raw_body_field(route) is not None:
            operation["requestBody"] = {
                "required": True,
                "description": "The body as sent, any media type: the method checks it.",
                "content": {"*/*": {"schema": {}}},
            }
        elif route.body:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.body_schema(route)}},
            }
        response: dict[str, Any] = {"description": "Success."}
        if success != 204:
            if route.server_streaming:
                response["content"] = {
                    "application/x-ndjson": {"schema": _stream_line(self.response_schema(route))},
                    "text/event-stream": {"schema": {"type": "string"}},
                }
                response["description"] = "A stream of messages, one per line or event."
            elif raw_reply_field(route) is not None:
                response["content"] = {"*/*": {"schema": {}}}
                response["description"] = "The body as the method made it, of the type it names."
            else:  # a schema is made (and named in the components) only where it is used
                response["content"] = {"application/json": {"schema": self.response_schema(route)}}
        declared = self.response_headers(route)
        answered = sorted(declared - {"x-http-code"})
        if answered and not route.server_streaming:  # a stream's metadata keeps its prefix
            response["headers"] = {name: {"schema": {"type": "string"}} for name in answered}
        if "x-http-code" in declared and raw_reply_field(route) is not None:
            # The method picks its status (a redirect, a page for a refused form), so any status
            # may carry its own body, as any may carry an error's google.rpc.Status.
            chosen = {**response, "description": "The method's answer, with the status it picked."}
            chosen["content"] = {"*/*": {"schema": {}}}
            operation["responses"] = {str(success): response, "4XX": chosen, "default": chosen}
        else:
            operation["responses"] = {str(success): response, **_errors(route, public=public)}
        if public is True:
            operation["security"] = []
        elif public is False:
            operation["security"] = [{"bearerAuth": []}]
        return operation

    def query_parameters(self, route: Route) -> list[dict[str, Any]]:
        if route.body == "*":
            return []
        bound = set(route.template.variables) | ({route.body} if route.body else set())
        out: list[dict[str, Any]] = []
        self._collect_query(route.method.input_type, ("", ""), bound, 0, out)
        return out

    def _collect_query(
        self,
        message: Descriptor,
        prefixes: tuple[str, str],
        bound: set[str],
        depth: int,
        out: list[dict[str, Any]],
    ) -> None:
        """The query parameters of `message`'s fields, reached at ``(proto path, JSON path)``
        `prefixes`."""
        prefix, json_prefix = prefixes
        for field in message.fields:
            name = prefix + field.name
            if name in bound or _is_map(field):
                continue
            target = field.message_type
            if target is not None and target.full_name == _HTTP_BODY:
                continue  # only a request's body sets a body
            if target is not None and target.full_name not in _QUERY_WELL_KNOWN:
                if not _is_repeated(field) and depth < _QUERY_DEPTH:
                    paths = (name + ".", json_prefix + field.json_name + ".")
                    self._collect_query(target, paths, bound, depth + 1, out)
                continue
            parameter: dict[str, Any] = {
                "name": json_prefix + field.json_name,  # the name proto3 JSON (and the edge) use
                "in": "query",
                "schema": self.field_schema(field),
            }
            if _is_repeated(field):
                parameter.update(style="form", explode=True)
            description = self.comment(field.full_name)
            if description:
                parameter["description"] = description
            out.append(parameter)

    def body_schema(self, route: Route) -> dict[str, Any]:
        request = route.method.input_type
        if route.body != "*":
            return self.field_schema(request.fields_by_name[route.body])
        in_path = {name for name in route.template.variables if "." not in name}
        if not in_path & set(request.fields_by_name):
            return self.message_schema(request)
        # The body of `body: "*"` holds every field the path does not bind.
        schema = self._object_schema(request)
        for name in in_path:
            field = request.fields_by_name.get(name)
            if field is not None:
                schema["properties"].pop(field.json_name, None)
                if field.json_name in schema.get("required", []):
                    schema["required"].remove(field.json_name)
        if not schema.get("required", True):
            del schema["required"]
        return schema

    def response_schema(self, route: Route) -> dict[str, Any]:
        response = route.method.output_type
        if route.response_body:
            return self.field_schema(response.fields_by_name[route.response_body])
        return self.message_schema(response)

    def message_schema(self, message: Descriptor) -> dict[str, Any]:
        well_known = _WELL_KNOWN.get(message.full_name)
        if well_known is not None:
            return dict(well_known)
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: a message may refer to itself
            self.schemas[message.full_name] = self._object_schema(message)
        return _ref(message.full_name)

    def enum_schema(self, enum: EnumDescriptor) -> dict[str, Any]:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = {
                "type": "string",
                "enum": [value.name for value in enum.values],
                **self._described(enum.full_name),
            }
        return _ref(enum.full_name)

    def field_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and _is_map(field):
            return {
                "type": "object",
                "additionalProperties": self._single_schema(entry.fields_by_name["value"]),
            }
        single = self._single_schema(field)
        return {"type": "array", "items": single} if _is_repeated(field) else single

    def _single_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message_schema(field.message_type)
        if field.enum_type is not None:
            return self.enum_schema(field.enum_type)
        return dict(_SCALARS[field.type])

    def _object_schema(self, message: Descriptor) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        required: list[str] = []
        for field in message.fields:
            schema = self.field_schema(field)
            if field.message_type is not None and not _is_repeated(field):
                schema = _nullable(schema)  # an unset message field is written as null
            behaviors = _field_behaviors(field)
            if "OUTPUT_ONLY" in behaviors:
                schema["readOnly"] = True
            elif "REQUIRED" in behaviors:
                required.append(field.json_name)
            description = self.comment(field.full_name)
            if description:
                schema["description"] = description
            properties[field.json_name] = schema
        schema = {"type": "object", **self._described(message.full_name), "properties": properties}
        if required:
            schema["required"] = required
        return schema

    def _described(self, full_name: str) -> dict[str, str]:
        comment = self.comment(full_name)
        return {"description": comment} if comment else {}

    def _field_comment(self, message: Descriptor, field_path: str) -> str:
        names = field_path.split(".")
        for name in names[:-1]:
            field = message.fields_by_name.get(name)
            if field is None or field.message_type is None:
                return ""
            message = field.message_type
        last = message.fields_by_name.get(names[-1])
        return self.comment(last.full_name) if last is not None else ""


def _source_comments(routes: Sequence[Route]) -> CommentSource:
    """Comments from the source info the routes' files (and their imports) kept, if any."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    pending = [route.method.containing_service.file for route in routes]
    while pending:
        file = pending.pop()
        if file.name in seen:
            continue
        seen.add(file.name)
        found.update(source_comments(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)))
        pending.extend(file.dependencies)
    return lambda full_name: found.get(full_name, "")


def _service_names(routes: Sequence[Route]) -> dict[str, str]:
    """Full service name -> its tag: the short name, or the full name when short names clash."""
    full_names = {route.method.containing_service.full_name for route in routes}
    short = [name.rsplit(".", 1)[-1] for name in full_names]
    return {
        name: (name.rsplit(".", 1)[-1] if short.count(name.rsplit(".", 1)[-1]) == 1 else name)
        for name in full_names
    }


def _expanded(text: str, verb: str) -> tuple[str, dict[str, str]]:
    """The template with each `*` of a variable's pattern as its own parameter (named after the
    literal before it), so templates that differ only in a pattern get distinct paths."""
    fields: dict[str, str] = {}

    def expand(match: re.Match[str]) -> str:
        variable, pattern = match.group(1).strip(), match.group(2)
        if not pattern or pattern in {"*", "**"}:
            fields[variable] = variable
            return "{" + variable + "}"
        segments = pattern.split("/")
        for index, segment in enumerate(segments):
            if segment in {"*", "**"}:
                before = segments[index - 1] if index else variable
                name = _unique(_singular(before), fields)
                fields[name] = variable
                segments[index] = "{" + name + "}"
        return "/".join(segments)

    path = _VARIABLE.sub(expand, text[: -len(verb) - 1] if verb else text)
    return (path + ":" + verb if verb else path), fields


def _has_patterns(text: str) -> bool:
    return any(pattern not in (None, "", "*") for _, pattern in _VARIABLE.findall(text))


def _singular(word: str) -> str:
    for plural, singular in (("ies", "y"), ("sses", "ss"), ("s", "")):
        if word.endswith(plural) and len(word) > len(plural):
            return word[: -len(plural)] + singular
    return word


def _unique(name: str, taken: set[str] | dict[str, str]) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    if isinstance(taken, set):
        taken.add(candidate)
    return candidate


def _field_behaviors(field: FieldDescriptor) -> set[str]:
    """`field`'s ``google.api.field_behavior`` values, read through the pool its file was
    loaded into (a descriptor set's, or reflection's): the process may never have imported
    the generated module that would teach the default pool that option."""
    message = field.containing_type
    if message is None:
        return set()
    pool = message.file.pool
    try:
        extension = pool.FindExtensionByName(_FIELD_BEHAVIOR)
        options_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("google.protobuf.FieldOptions")
        )
    except KeyError:  # the field's files never import field_behavior.proto: no behaviour
        return set()
    if extension.enum_type is None:
        return set()
    options = options_class.FromString(field.GetOptions().SerializeToString())
    names = extension.enum_type.values_by_number
    values: list[int] = list(options.Extensions[extension])  # type: ignore[index]
    return {names[number].name for number in values if number in names}


def _stream_line(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"result": schema, "error": _ref(STATUS_NAME)},
    }


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        _is_repeated(field) and field.message_type is not None and field.message_type.GetOptions().map_entry
    )


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    if kind is None:
        return schema  # any JSON value already
    kinds = kind if isinstance(kind, list) else [kind]
    return schema if "null" in kinds else {**schema, "type": [*kinds, "null"]}


def _error_response(description: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{STATUS_NAME}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_RESPONSES: dict[str, dict[str, Any]] = {
    "BadRequest": _error_response("The request is malformed: JSON, a field, a query parameter."),
    "Unauthenticated": _error_response("No valid bearer token."),
    "PermissionDenied": _error_response("The token's principal may not do this."),
    "NotFound": _error_response("No route for the path, or no such resource."),
    "TooLarge": _error_response("The body is over the edge's limit."),
    "UnsupportedMediaType": _error_response("The body was not sent as application/json."),
    "RateLimited": _error_response("Too many requests: wait as Retry-After says."),
    "Unavailable": _error_response("The service is unavailable: retry later."),
    "Error": _error_response("Any other error, as a google.rpc.Status."),
}
"""Shared in ``components.responses``: every error has the `google.rpc.Status` body."""


def _errors(route: Route, *, public: bool | None) -> dict[str, Any]:
    """The error answers an operation can give, by HTTP status (``default`` for the rest)."""
    refs = {"400": "BadRequest", "404": "NotFound", "429": "RateLimited", "503": "Unavailable"}
    if public is not True:
        refs |= {"401": "Unauthenticated", "403": "PermissionDenied"}
    if route.body:
        refs |= {"413": "TooLarge"}
        if raw_body_field(route) is None:
            refs["415"] = "UnsupportedMediaType"
    answers = {status: {"$ref": f"#/components/responses/{name}"} for status, name in sorted(refs.items())}
    return {**answers, "default": {"$ref": "#/components/responses/Error"}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}
