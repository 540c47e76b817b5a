"""This deployment as a relying party of an outside OpenID provider (federation, mode a): the
requests it sends there and the ID tokens it accepts back (OpenID Connect Core 3.1).

- Endpoints come from the provider's discovery document (`kit.federation.discovery`, its
  issuer checked), kept `DISCOVERY_SECONDS`; each must be https.
- The authorization request carries PKCE S256, a state and a nonce (`federated` keeps them).
- The code is exchanged at the provider's token endpoint with this deployment's client
  credentials (HTTP Basic, each part form-encoded as RFC 6749 2.3.1 asks), within a bounded
  wait, never following a redirect.
- The ID token must be signed by a key of the provider's JWK Set (EdDSA or RS256, the key's
  own algorithm), name the provider as ``iss``, this deployment's client in ``aud`` (and
  ``azp`` when it names several), carry the nonce sent, and be current.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import jwt

from services.auth.federated import IdClaims, UpstreamError
from services.kit import federation
from services.kit.authn import KeySet
from services.kit.config import ExternalIssuer
from services.kit.domain_errors import DomainError

__all__ = ["DISCOVERY_SECONDS", "Upstream"]

DISCOVERY_SECONDS = 300.0
_LEEWAY_SECONDS = 30


@dataclass
class Upstream:
    """One outside provider, as people sign in here through it (`federated.Upstream`)."""

    external: ExternalIssuer
    redirect_uri: str
    """Where the provider sends people back: this deployment's callback."""
    timeout: float = 5.0
    keys: KeySet | None = None
    _document: tuple[float, dict[str, Any]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = KeySet(federation.discovered_keys(self.external, timeout=self.timeout))

    @property
    def alias(self) -> str:
        return self.external.alias

    @property
    def names_itself(self) -> bool:
        """Whether the provider says it puts ``iss`` in every answer (RFC 9207): one without
        it is then no answer of its own. Known once its discovery document is."""
        return bool(
            self._document and self._document[1].get("authorization_response_iss_parameter_supported")
        )

    def form_targets(self) -> tuple[str, ...]:
        """Where a browser is sent to sign in there: its issuer, and its authorization
        endpoint once discovered (the sign-in page's CSP must let its form go there)."""
        endpoint = self._document[1].get("authorization_endpoint") if self._document else None
        return (self.issuer, *([endpoint] if isinstance(endpoint, str) else []))

    def warm(self) -> None:
        """Fetch the discovery document now if it can be (a start-up's background step)."""
        with contextlib.suppress(UpstreamError):
            self._endpoint("authorization_endpoint")

    @property
    def issuer(self) -> str:
        return self.external.issuer

    def authorization_url(self, *, state: str, nonce: str, challenge: str) -> str:
        endpoint = self._endpoint("authorization_endpoint")
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.external.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": "openid email",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def claims(self, code: str, verifier: str, nonce: str) -> IdClaims:
        """The ID token's word on who signed in, for `code` (and the PKCE `verifier`)."""
        id_token = self._exchange(code, verifier)
        try:
            assert self.keys is not None
            _, algorithm, key = self.keys.signing_key(jwt.get_unverified_header(id_token))
            claims = jwt.decode(
                id_token,
                key=key,
                algorithms=[algorithm],
                audience=self.external.client_id,
                issuer=self.issuer,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "exp", "iat"]},
            )
        except (jwt.PyJWTError, DomainError) as error:
            raise UpstreamError(
                f"the provider's ID token is not acceptable ({type(error).__name__})"
            ) from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        azp = claims.get("azp", self.external.client_id if len(audiences) == 1 else None)
        if azp != self.external.client_id or not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise UpstreamError("the provider's ID token was not issued for this sign-in")
        subject, email, name = claims["sub"], claims.get("email", ""), claims.get("name", "")
        if not isinstance(subject, str) or not 0 < len(subject) <= 255 or not subject.isprintable():
            raise UpstreamError("the provider's ID token names no person")
        return IdClaims(
            subject=subject,
            email=email if isinstance(email, str) else "",
            email_verified=claims.get("email_verified") is True,
            name=name if isinstance(name, str) else "",
        )

    def _exchange(self, code: str, verifier: str) -> str:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        secret = self.external.client_secret
        auth = None
        if secret:
            quote = urllib.parse.quote_plus
            auth = (quote(self.external.client_id), quote(secret))
        else:
            form["client_id"] = self.external.client_id  # a public client of the provider
        endpoint = self._endpoint("token_endpoint")
        try:
            status, found = federation.fetch_json(endpoint, self.external, self.timeout, form=form, auth=auth)
        except (OSError, ValueError) as error:
            raise UpstreamError(f"the provider cannot be reached ({type(error).__name__})") from None
        if status != 200 or not isinstance(found, dict) or not isinstance(found.get("id_token"), str):
            raise UpstreamError(f"the provider refused the sign-in (HTTP {status})")
        return str(found["id_token"])

    def _endpoint(self, name: str) -> str:
        now = time.monotonic()
        if self._document is None or now - self._document[0] > DISCOVERY_SECONDS:
            try:
                self._document = (now, federation.discovery(self.external, timeout=self.timeout))
            except (OSError, ValueError) as error:
                raise UpstreamError(f"the provider cannot be reached ({type(error).__name__})") from None
        endpoint = self._document[1].get(name)
        if not isinstance(endpoint, str) or not endpoint.startswith("https://"):
            raise UpstreamError(f"the provider names no https {name}")
        return endpoint
