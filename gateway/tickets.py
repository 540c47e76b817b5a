"""Stream tickets: a browser's ``EventSource`` opens a stream without an access token in its URL.

``EventSource`` cannot send an ``Authorization`` header, and an access token must never be put
in a URL: URLs reach access logs, proxies, browser history and ``Referer`` headers, and the
token would stay valid there for its whole lifetime. So a page trades its token, with
``fetch`` and the header, for a ticket (``POST /stream-tickets`` with ``{"path": ...}``) and
opens the stream with ``?access_ticket=<ticket>``. A ticket is worth little in a log line:

- **short-lived**: `StreamTickets` keeps it `lifetime` seconds (30 by default), never past the
  token's own ``exp``;
- **single-use**: it is popped by the first request that presents it, whatever that request's
  fate (a wrong path, a unary route, a second credential), so a copy from a log is spent;
- **audience-bound**: it opens exactly the path (no query) it was issued for, and only a
  server-streaming route; anywhere else it is refused like an unknown one (`InvalidTicket`:
  unknown, used, expired and wrong path share one answer, so a guess learns nothing);
- **opaque**: 256 random bits (`secrets.token_urlsafe`); the store is keyed by the ticket's
  SHA-256, so the tickets themselves are not kept.

The redeemed request goes on with the stored token as its ``authorization`` metadata, exactly
as the header would have gone, and the backend verifies it and decides as always: a ticket
only carries a token, it grants nothing of its own.

The store is bounded (`per_token` outstanding tickets per bearer token, `per_address` per
client address, `total` in all; past any, `TooManyTickets`) and purged lazily as tickets are
issued. It lives in the memory of one edge process: a ticket is redeemed at the replica that
issued it. Behind several replicas, stream with ``fetch`` (it sends the header) or make the
load balancer sticky.

Exception tree::

    Exception
     └── TicketError           a ticket cannot be issued or redeemed
          ├── TooManyTickets   a cap is reached: 429, `retry_after` seconds
          ├── TokenExpired     the token has less than a second left: 401
          ├── InvalidTicket    unknown, used, expired or for another path: 401, one message
          └── MisplacedTicket  a ticket where none is taken, or beside a credential: 400
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.errors import BadRequest
from services.kit.authn import unverified_part

__all__ = [
    "ENDPOINT",
    "PARAMETER",
    "Claim",
    "InvalidTicket",
    "Issued",
    "MisplacedTicket",
    "StreamTickets",
    "TicketError",
    "TokenExpired",
    "TooManyTickets",
    "requested_path",
]

ENDPOINT = "/stream-tickets"
"""Where the edge issues tickets (``POST``)."""
PARAMETER = "access_ticket"
"""The query parameter a ticket is presented in; the edge takes it out before the query is
mapped to request fields."""

_MAX_PATH = 2048
_PATH_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@%/"
)
"""RFC 3986 ``pchar`` and ``/``: a path as a client sends it, with no query or fragment."""


class TicketError(Exception):
    """A stream ticket cannot be issued or redeemed."""


class TooManyTickets(TicketError):
    """The token, or the edge as a whole, holds as many unredeemed tickets as it may."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds until one of the tickets in the way expires."""


class TokenExpired(TicketError):
    """The bearer token expires within the second: a ticket for it would open nothing."""


class InvalidTicket(TicketError):
    """Unknown, used, expired or issued for another path: one answer for all of them."""


class MisplacedTicket(TicketError):
    """A ticket on a request that takes none (not a GET or HEAD of a server stream), several
    tickets, or a ticket beside an ``Authorization`` header."""


@dataclass(frozen=True, slots=True)
class Issued:
    """A ticket as its holder gets it."""

    ticket: str = field(repr=False)
    expires_in: int
    """Whole seconds it stays redeemable."""


@dataclass(slots=True)
class _Entry:
    token: str = field(repr=False)
    path: str
    expires: float
    holder: str
    """The SHA-256 of the token: whose tickets this one counts among."""
    address: str = ""
    """The client address that asked for it: another count it is among."""


@dataclass(frozen=True, slots=True)
class Claim:
    """The ticket a request presented, spent already (`StreamTickets.take`), to be opened
    once the request is routed (`StreamTickets.open`)."""

    query: list[tuple[str, str]]
    """The request's query parameters without any ticket: what is mapped to request fields."""
    presented: int = 0
    """How many tickets the request presented."""
    entry: _Entry | None = field(default=None, repr=False)
    """What the first one carried, if it was still held."""


def _address_key(address: str) -> str:
    """Whose allowance a client address counts against: itself, or for IPv6 its /64 (one
    subscriber's network: a client there has 2^64 addresses to spread over)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6 and parsed.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _token_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT (seconds since the epoch), read without verifying it; None for a
    token that is not a JWT or has none. Safe unverified: it can only shorten a ticket."""
    expiry = unverified_part(token, 1).get("exp")
    if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not math.isfinite(expiry):
        return None
    return float(expiry)


def requested_path(body: bytes) -> str:
    """The path a ticket request's JSON body ``{"path": "/v1/..."}`` names; `BadRequest`
    unless it is an object with exactly that one key, naming an absolute path without a
    query or fragment, of at most 2048 characters of RFC 3986."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not JSON", [("body", 'expected {"path": "/v1/..."}')]) from None
    if not isinstance(document, dict) or set(document) != {"path"}:
        raise BadRequest('expected {"path": ...} and nothing else', [("body", "one key: path")])
    path = document["path"]
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or len(path) > _MAX_PATH
        or not set(path) <= _PATH_CHARACTERS
    ):
        raise BadRequest(
            "path must be the stream's path, without a query",
            [("path", f"an absolute path of at most {_MAX_PATH} URL characters, no query or fragment")],
        )
    return path


class StreamTickets:
    """Tickets in memory: `issue` one for a bearer token and a path, `redeem` it once.

    `clock` (monotonic seconds) times the tickets and `wall_clock` (seconds since the epoch)
    reads the token's ``exp`` against; both are parameters so tests never sleep.
    """

    def __init__(
        self,
        *,
        lifetime: float = 30.0,
        per_token: int = 16,
        per_address: int = 256,
        total: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not lifetime > 0 or per_token < 1 or per_address < 1 or total < 1:
            raise ValueError("a ticket must live, and at least one must be allowed")
        self._lifetime, self._per_token, self._total = lifetime, per_token, total
        self._per_address = per_address
        self._by_address: dict[str, int] = {}
        """Client address -> its unredeemed tickets."""
        self._clock, self._wall_clock = clock, wall_clock
        self._entries: dict[str, _Entry] = {}
        """By the ticket's SHA-256, in the order issued: the oldest first."""
        self._held: dict[str, dict[str, float]] = {}
        """Token digest -> its tickets' digests -> their expiry, in the order issued."""

    @property
    def outstanding(self) -> int:
        """Tickets issued and not redeemed, expired ones not purged yet included."""
        return len(self._entries)

    def issue(self, token: str, path: str, *, address: str = "") -> Issued:
        """A new ticket carrying `token` to `path`, for `lifetime` seconds or until the token's
        ``exp``, whichever is first, asked for from the client `address`. `TooManyTickets`
        past a cap (per token, per address, in all), `TokenExpired` for a token with less than
        a second left."""
        now = self._clock()
        self._purge(now)
        lifetime = self._lifetime
        expiry = _token_expiry(token)
        if expiry is not None:
            lifetime = min(lifetime, expiry - self._wall_clock())
        if lifetime < min(1.0, self._lifetime):
            raise TokenExpired("the access token has expired")
        holder = _digest(token)
        held = self._held.get(holder, {})
        if len(held) >= self._per_token:
            raise TooManyTickets(
                "too many unredeemed stream tickets for this token", min(held.values()) - now
            )
        address = _address_key(address)
        if self._by_address.get(address, 0) >= self._per_address:
            oldest = next(e for e in self._entries.values() if e.address == address)
            raise TooManyTickets("too many unredeemed stream tickets from this address", oldest.expires - now)
        if len(self._entries) >= self._total:
            oldest = next(iter(self._entries.values()))
            raise TooManyTickets("too many unredeemed stream tickets", oldest.expires - now)
        ticket = secrets.token_urlsafe(32)
        key = _digest(ticket)
        expires = now + lifetime
        self._entries[key] = _Entry(token, path, expires, holder, address)
        self._held.setdefault(holder, {})[key] = expires
        self._by_address[address] = self._by_address.get(address, 0) + 1
        return Issued(ticket, math.floor(lifetime))

    def redeem(self, ticket: str, path: str) -> str:
        """The token `ticket` carries, when it is unexpired and was issued for `path`; the
        ticket is spent either way. `InvalidTicket` otherwise, the same for every cause."""
        return self._valid(self._pop(_digest(ticket)), path)

    def take(self, query: Sequence[tuple[str, str]]) -> Claim:
        """Spend every ticket among a request's `query` parameters, before anything else is
        known of the request: a ticket that was presented once is spent, whatever the answer."""
        presented = [value for name, value in query if name == PARAMETER]
        if not presented:
            return Claim(list(query))
        entries = [self._pop(_digest(ticket)) for ticket in presented]
        remaining = [(name, value) for name, value in query if name != PARAMETER]
        return Claim(remaining, len(presented), entries[0])

    def open(self, claim: Claim, *, path: str, takes_ticket: bool, authorized: bool) -> str | None:
        """The token `claim`'s ticket carries (None when the request presented no ticket).
        The request is for `path`; `takes_ticket` says whether it is a GET or HEAD of a
        server stream, `authorized` whether it has an ``Authorization`` header.
        `MisplacedTicket` or `InvalidTicket` when it cannot be opened."""
        if not claim.presented:
            return None
        if claim.presented > 1:
            raise MisplacedTicket(f"send one {PARAMETER}")
        if not takes_ticket:
            raise MisplacedTicket(f"{PARAMETER} opens only a GET of a server-streaming route")
        if authorized:
            raise MisplacedTicket(f"send {PARAMETER} or an Authorization header, not both")
        return self._valid(claim.entry, path)

    def _valid(self, entry: _Entry | None, path: str) -> str:
        # The path is no secret (it is in the request line): a plain comparison is enough.
        if entry is None or entry.expires <= self._clock() or entry.path != path:
            raise InvalidTicket("the stream ticket is not valid: get a new one")
        return entry.token

    def _pop(self, key: str) -> _Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            held = self._held[entry.holder]
            del held[key]
            if not held:
                del self._held[entry.holder]
            left = self._by_address[entry.address] - 1
            if left:
                self._by_address[entry.address] = left
            else:
                del self._by_address[entry.address]
        return entry

    def _purge(self, now: float) -> None:
        """Drop expired tickets from the oldest on. A ticket cut short by its token's ``exp``
        may wait behind an older one, but never past `lifetime` from its issue."""
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.expires > now:
                return
            self._pop(key)
