"""People of outside identity providers (OpenID Connect federation), as every service meets them.

A provider named in ``POLY_FEDERATION_*`` (`config.ExternalIssuer`) with an audience has its
access tokens accepted by `authn.Verifier` beside the auth service's own:

- its keys are found as a relying party finds them: the discovery document at
  ``<issuer>/.well-known/openid-configuration`` over HTTPS (its ``issuer`` must be the configured
  one exactly, RFC 8414 3.3), then its ``jwks_uri`` (https too), each with a bounded wait and
  size, kept in a `authn.KeySet` (cached, refetched for an unknown ``kid`` at most once per
  interval, the cached keys kept while the provider is down);
- a token must carry its ``iss``, the configured ``aud``, ``sub``, ``exp`` and ``iat``;
- its person is ``users/<id>``, the id a UUID derived from issuer and subject
  (`external_user_id`): stable, and never one of this deployment's own ids. The auth service
  gives the account it creates for such a person at first sign-in the same id;
- roles come only through the configured mapping from the provider's roles claim: a role the
  provider calls "admin" grants nothing here unless mapped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from services.kit.authn import KeySet, KeySource, Principal
from services.kit.config import AuthSettings, ExternalIssuer
from services.kit.domain_errors import Unauthenticated

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "Trusted",
    "discovered_keys",
    "discovery",
    "external_user_id",
    "fetch_json",
    "trusted_issuers",
]

_NAMESPACE = uuid.UUID("5d0f3c52-7a43-4c6e-9d55-3e0c8a6f2b11")
MAX_DOCUMENT_BYTES = 512 * 1024
"""A discovery document or key set larger than this is refused unread."""


def external_user_id(issuer: str, subject: str) -> str:
    """The id here of the person `subject` of `issuer`."""
    return str(uuid.uuid5(_NAMESPACE, f"{issuer}#{subject}"))


def fetch_json(
    url: str,
    external: ExternalIssuer,
    timeout: float,
    *,
    form: Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> tuple[int, Any]:
    """GET (or, with `form`, POST) https `url` of `external`: its status and JSON body, within
    `timeout` seconds in all and `MAX_DOCUMENT_BYTES`; OSError (TimeoutError, requests'
    errors) or ValueError otherwise. The exchange runs in a thread of its own, so a provider
    that drips its answer holds only that thread, never the caller, beyond `timeout`."""
    if not url.startswith("https://"):
        raise ValueError(f"{url!r} is not https")
    outcome: list[tuple[int, Any] | BaseException] = []
    deadline = time.monotonic() + timeout

    def exchange() -> None:
        try:
            answer = requests.request(
                "POST" if form is not None else "GET",
                url,
                data=form,
                auth=auth,
                timeout=(timeout, timeout),
                verify=str(external.ca_file) if external.ca_file else True,
                allow_redirects=False,
                stream=True,
            )
            body = b""
            with answer:
                # read1: each read returns what has come, so a drip cannot outlast the deadline
                while chunk := answer.raw.read1(65536):
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES or time.monotonic() > deadline:
                        raise ValueError(f"{url}: larger than {MAX_DOCUMENT_BYTES} bytes, or too slow")
            outcome.append((answer.status_code, json.loads(body)))
        except RecursionError:
            outcome.append(ValueError(f"{url}: JSON nested too deep"))
        except (OSError, ValueError) as error:  # requests' errors are OSErrors
            outcome.append(error)
        except Exception as error:  # noqa: BLE001 - urllib3's own (a body cut short), as a failed connection
            outcome.append(ConnectionError(f"{url}: {type(error).__name__}"))

    worker = threading.Thread(target=exchange, name="federation-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():  # it ends by itself: its reads are bounded, and its loop by the deadline
        raise TimeoutError(f"{url}: no whole answer within {timeout} s")
    found = outcome[0] if outcome else ValueError(f"{url}: no answer")
    if isinstance(found, BaseException):
        raise found
    return found


def _get_json(url: str, external: ExternalIssuer, timeout: float) -> Any:
    status, document = fetch_json(url, external, timeout)
    if status != 200:
        raise ValueError(f"{url}: HTTP {status}")
    return document


def discovery(external: ExternalIssuer, *, timeout: float = 5.0) -> dict[str, Any]:
    """`external`'s OpenID discovery document, fetched now; ValueError or OSError (requests'
    errors) when it cannot be had or names another issuer."""
    # The issuer as configured, even with its trailing slash (Auth0's has one): `iss` must match
    # it exactly, and the document's path follows it without a doubled slash.
    document = _get_json(f"{external.issuer.rstrip('/')}/.well-known/openid-configuration", external, timeout)
    if not isinstance(document, dict) or document.get("issuer") != external.issuer:
        raise ValueError("the discovery document names another issuer")
    return document


def discovered_keys(external: ExternalIssuer, *, timeout: float = 5.0) -> KeySource:
    """A `authn.KeySource` fetching `external`'s JWK Set by OpenID discovery."""

    def fetch() -> Mapping[str, Any]:
        document = discovery(external, timeout=timeout)
        keys = _get_json(str(document.get("jwks_uri", "")), external, timeout)
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise ValueError("the key set is not a JWK Set")
        return keys

    return fetch


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    found: Any = claims
    for part in path.split("."):
        found = found.get(part) if isinstance(found, Mapping) else None
    return found


@dataclass(frozen=True, slots=True)
class Trusted:
    """An outside issuer whose access tokens the services accept (`authn.TrustedIssuer`)."""

    external: ExternalIssuer
    keys: KeySet

    @property
    def issuer(self) -> str:
        return self.external.issuer

    @property
    def audience(self) -> str:
        return self.external.audience

    def principal(self, claims: Mapping[str, Any], token: str) -> Principal:
        subject, scope = claims.get("sub"), claims.get("scope", "")
        listed = _claim(claims, self.external.roles_claim)
        theirs = listed.split() if isinstance(listed, str) else listed if isinstance(listed, list) else []
        if not isinstance(subject, str) or not 0 < len(subject) <= 255 or not isinstance(scope, str):
            raise Unauthenticated("TOKEN_CLAIMS_INVALID", "the access token's claims are invalid")
        granted = {ours for their, ours in self.external.roles if their in theirs}
        client = claims.get("azp") or claims.get("client_id") or ""
        return Principal(
            subject=f"users/{external_user_id(self.issuer, subject)}",
            roles=frozenset(granted),
            scopes=frozenset(scope.split()),
            token_id=str(claims.get("jti") or hashlib.sha256(token.encode()).hexdigest()[:32]),
            issued_at=dt.datetime.fromtimestamp(int(claims["iat"]), dt.UTC),
            expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
            client_id=client if isinstance(client, str) else "",
        )


def trusted_issuers(settings: AuthSettings, *, timeout: float = 5.0) -> list[Trusted]:
    """The outside issuers in `settings` whose access tokens are accepted (those with an audience)."""
    return [
        Trusted(
            external,
            KeySet(
                discovered_keys(external, timeout=timeout),
                max_age=settings.jwks_max_age_seconds,
                min_refresh=settings.jwks_min_refresh_seconds,
            ),
        )
        for external in settings.external
        if external.audience
    ]
