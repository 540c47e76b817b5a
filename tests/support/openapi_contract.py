"""An OpenAPI 3.0 document held as a contract: what a request or an answer breaks of it,
by `openapi_schema_validator`'s OAS 3.0 validators (request bodies as a client writes them,
answers as a client reads them; header parameters too). The local provider APIs in
`tests.support` check every exchange with it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30ReadValidator, OAS30Validator, OAS30WriteValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

__all__ = ["Contract"]


class Contract:
    """One of PayPal's OpenAPI documents, and what a request or an answer breaks of it."""

    def __init__(self, path: Path) -> None:
        self.document = json.loads(path.read_text())
        self._uri = f"urn:paypal:{path.stem}"
        resource = Resource.from_contents(self.document, default_specification=DRAFT4)
        self._registry: Registry[Any] = Registry().with_resource(self._uri, resource)
        self._routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"), template)
            for template in self.document["paths"]
        ]

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, template in self._routes:
            if pattern.match(path):
                found = self.document["paths"][template].get(method.lower())
                if found is not None:
                    return template, found
        return None

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.document
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def _problems(self, validator: Any, schema: dict[str, Any], value: Any, where: str) -> list[str]:
        anchored = json.loads(json.dumps(schema).replace('"#/', f'"{self._uri}#/'))
        check = validator(anchored, registry=self._registry)
        return [
            f"{where}: {error.message[:300]} at {list(error.absolute_path)}"
            for error in check.iter_errors(value)
        ]

    def request_problems(self, method: str, path: str, headers: dict[str, str], body: Any) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return [f"{method} {path}: not in {self._uri}"]
        template, operation = found
        problems: list[str] = []
        parameters = [
            *self.document["paths"][template].get("parameters", []),
            *operation.get("parameters", []),
        ]
        for parameter in (self._resolve(p) for p in parameters):
            if parameter["in"] != "header":
                continue
            value = headers.get(parameter["name"].lower())
            if value is None:
                if parameter.get("required"):
                    problems.append(f"header {parameter['name']}: required")
                continue
            problems += self._problems(
                OAS30WriteValidator, parameter["schema"], value, f"header {parameter['name']}"
            )
        declared = {
            self._resolve(p)["name"].lower() for p in parameters if self._resolve(p)["in"] == "header"
        }
        if "paypal-request-id" in headers and "paypal-request-id" not in declared:
            problems.append(f"{method} {template}: PayPal-Request-Id is not a parameter of this operation")
        wanted = operation.get("requestBody")
        if wanted is not None:
            contents = self._resolve(wanted).get("content", {})
            content = contents.get("application/json") or contents.get("application/x-www-form-urlencoded")
            if body is None and self._resolve(wanted).get("required"):
                problems.append(f"{method} {template}: a body is required")
            elif body is not None and content is not None:
                # A verification request carries the event as it was received, read-only
                # fields and all (PayPal's documented use): it is checked as a plain schema.
                plain = template.endswith("verify-webhook-signature")
                validator = OAS30Validator if plain else OAS30WriteValidator
                problems += self._problems(validator, content["schema"], body, f"{method} {template} body")
        elif body is not None:
            problems.append(f"{method} {template}: takes no body")
        return problems

    def answer_problems(self, method: str, path: str, status: int, body: Any) -> list[str]:
        found = self.operation(method, path)
        if found is None:
            return []
        template, operation = found
        responses = operation["responses"]
        declared = responses.get(str(status)) or responses.get("default")
        if declared is None:
            return [f"{method} {template}: answered {status}, which it does not declare"]
        content = (self._resolve(declared).get("content") or {}).get("application/json")
        if content is None or body is None:
            return []
        return self._problems(OAS30ReadValidator, content["schema"], body, f"{method} {template} {status}")

    def issue(self, schema: str, issue: str) -> dict[str, str]:
        """An error detail exactly as the specification's `schema` lists `issue`."""
        for choice in self.document["components"]["schemas"][schema]["properties"]["details"]["items"][
            "anyOf"
        ]:
            if choice["title"] == issue:
                return {"issue": issue, "description": choice["properties"]["description"]["enum"][0]}
        raise KeyError(f"{issue} is not an issue of {schema}")
