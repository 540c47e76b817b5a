"""The HTTP side of the edge: one handler on the edge's HTTP server turns each request into a
gRPC call.

The edge routes by its own compiled rules, so it runs on its own HTTP/1.1 and HTTP/2 server
(`gateway.httpserver`) and dispatches itself: ``/healthz``, ``/readyz`` and ``/openapi.json`` by
exact path, ``POST /stream-tickets`` (`gateway.tickets`: a bearer token traded for a
single-use ticket an ``EventSource`` opens one stream with, ``?access_ticket=``), everything
else to the transcoder.

Per request: route (404, or 405 with ``Allow``), hold the client to its limits (429 with
``Retry-After``), build the request message from the path variables, the body and the query (400
with field violations), forward the headers as metadata, call the backend with the client's
``Grpc-Timeout`` or the route's default deadline (cancelled if the client goes away), and answer
with proto3 JSON, NDJSON or Server-Sent Events. Every failure, routing misses included, leaves
as one ``google.rpc.Status`` body rendered by `gateway.errors.render_status`.

The client's address is the TCP peer, or, when the peer is a configured trusted proxy, the
rightmost ``X-Forwarded-For`` entry that is not one (`gateway.headers.client_address`). The
rate limit is a token bucket per key: ``principal:<sub>`` when the edge has a token verifier
(`gateway.tokens`) and the request's bearer token verifies, else ``address:<address>``, so
a token the edge cannot vouch for never earns its own bucket. A token the verifier refuses
counts at once as a failed authentication of the address, as does every UNAUTHENTICATED
answer of a backend (once per request); past ``auth_failures_per_address`` in a window, the
address gets 429 until the window ends, whatever credential it sends. The verifier only
picks the bucket: the backends verify every token again and decide.

Every request passes `gateway.observe` first (the outermost wrapper): it picks the request's
``X-Request-Id``, works out the client's address, runs the request in its span, counts it and
writes its access line. The handler tells it the matched route and observes each backend call
through it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway import (
    answers,
    compression,
    cors,
    errors,
    headers,
    jsoncodec,
    query,
    streaming,
    tickets,
    wire,
)
from gateway.backends import READY_STATES, Backends
from gateway.config import Limits
from gateway.httpserver import Server
from gateway.limits import FailureWindows, TokenBuckets
from gateway.observe import BackendCall, Exchange, Handler, Observer
from gateway.plans import Compiled, Plan, Routing, backend_method, compile_routing
from gateway.routes import MethodNotAllowed, Route, RouteNotFound
from gateway.tickets import StreamTickets
from gateway.tokens import CannotVerify, OutsideToken, TokenVerifier, bearer_token
from gateway.wire import HTTP_11, Request, Response, Stream

__all__ = ["Edge"]

_log = logging.getLogger("poly.gateway")


_FIXED_METHODS = frozenset({"GET", "HEAD"})
"""The methods of the fixed endpoints; any other goes to the transcoder (a 404 or 405 there)."""
_TICKET_METHODS = frozenset({"GET", "HEAD"})
"""The methods a stream ticket opens a server stream with."""
_MAX_TICKET_TOKEN = 8192
"""Longer bearer tokens get no ticket: an access token is about a kilobyte, and the store
keeps the token."""


@dataclass(slots=True)
class _Client:
    """Who sent a request, as far as the limits are concerned."""

    address: str
    key: str = ""
    """The rate limit's bucket: ``principal:<sub>`` or ``address:<address>``."""
    failure_counted: bool = False
    """A failed authentication of this request was counted already."""


_Serve = Callable[[Request, Exchange, _Client], Awaitable[Response | Stream]]


class Edge:
    """The HTTP/JSON edge serving `routing`'s routes from `backends` (`server` runs it).

    `verify_token` names the principal of a bearer token, to limit per principal; without
    one (the default), every request is limited by its client's address; with one, a stream
    ticket is issued only for a token it does not refuse. `observer` records spans, metrics
    and access lines (`gateway.observe`; by default access lines only). `stream_tickets`
    replaces the store of stream tickets `settings.stream_ticket_seconds` describes (none,
    and no ``/stream-tickets``, when that is 0).
    """

    def __init__(
        self,
        routing: Routing,
        backends: Backends,
        settings: Limits,
        *,
        verify_token: TokenVerifier | None = None,
        observer: Observer | None = None,
        stream_tickets: StreamTickets | None = None,
    ) -> None:
        self._routes = compile_routing(routing)
        self._fixed: dict[str, Handler] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/openapi.json": self._openapi,
        }
        self._observer = observer or Observer()
        self._backends = backends
        self._settings = settings
        self._buckets = (
            TokenBuckets(settings.rate_per_second, settings.rate_burst) if settings.rate_per_second else None
        )
        self._failures = (
            FailureWindows(settings.auth_failures_per_address, settings.auth_failure_window_seconds)
            if settings.auth_failures_per_address
            else None
        )
        self._trusted = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in settings.trusted_proxies)
        # Verified only when a limit would use the answer.
        limited = self._buckets is not None or self._failures is not None
        self._verify_token = verify_token if limited else None
        self._vouch_for = verify_token  # a ticket needs a token the edge does not refuse
        lifetime = settings.stream_ticket_seconds
        # Only an edge that verifies tokens issues tickets: a ticket for a token nobody checked
        # would let anyone fill the store with junk (a standalone edge has no key set).
        if stream_tickets is None and lifetime and verify_token is not None:
            stream_tickets = StreamTickets(lifetime=lifetime)
        self._tickets = stream_tickets

    async def close(self) -> None:
        """Close the channels to the backends, once the edge's server has stopped."""
        await self._backends.close()

    def reroute(self, routing: Routing) -> None:
        """Serve `routing` from now on; requests already routed finish on the old routes."""
        self._routes = compile_routing(routing)

    def server(
        self, *, on_refused: wire.Refused | None = None, tls: ssl.SSLContext | None = None, http2: bool = True
    ) -> Server:
        """The HTTP server of this edge (`Server.start` listens): HTTP/1.1, and HTTP/2 unless
        `http2` is False; HTTPS with `tls`. `on_refused` is told of each request refused
        before the edge saw it (malformed, or over a limit)."""
        handler: Handler = self._dispatch
        # No origins configured, no CORS headers ever: the wrapper would only cost time.
        if self._settings.cors_origins:
            handler = cors.allowing(self._settings.cors_origins, handler)
        observed = self._observer.observing(compression.compressing(handler), self._client_address)
        return Server(
            observed,
            max_body_bytes=self._settings.max_body_bytes,
            on_refused=on_refused,
            tls=tls,
            http2=http2,
        )

    async def _dispatch(self, request: Request) -> Response | Stream:
        path = request.raw_path.partition("?")[0]
        if request.method in _FIXED_METHODS:
            fixed = self._fixed.get(path)
            if fixed is not None:
                return await fixed(request)
        elif request.method == "POST" and path == tickets.ENDPOINT and self._tickets is not None:
            return await self._handle(request, self._issue_ticket)
        return await self._handle(request)

    # -- fixed endpoints -------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return wire.json_response({"status": "SERVING"})

    async def _readyz(self, request: Request) -> Response:
        found = await self._backends.health(self._routes.services)
        ready = all(state in READY_STATES for state in found.values())
        return wire.json_response(
            {"status": "SERVING" if ready else "NOT_SERVING", "backends": found}, status=200 if ready else 503
        )

    async def _openapi(self, request: Request) -> Response:
        request.exchange.routed("/openapi.json")
        return Response(200, self._routes.document)

    # -- stream tickets (gateway.tickets) -------------------------------------------------

    async def _issue_ticket(self, request: Request, exchange: Exchange, client: _Client) -> Response:
        """``POST /stream-tickets`` ``{"path": ...}``: a ticket for the caller's bearer token
        that opens the server stream at that path once."""
        exchange.routed(tickets.ENDPOINT)
        store = self._tickets
        if store is None:  # not dispatched here then: no store, no endpoint
            raise answers.refusal(grpc.StatusCode.NOT_FOUND, "no route for this path", "ROUTE_NOT_FOUND")
        self._limit_rate(request, client)
        token = bearer_token(request.headers.getall("Authorization", []))
        if token is None:
            raise answers.refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "send the access token as Authorization: Bearer <token>",
                "TOKEN_MISSING",
                extra={"WWW-Authenticate": "Bearer"},
            )
        if len(token) > _MAX_TICKET_TOKEN:
            raise self._invalid_token(client)
        self._vouch(token, client)
        path = tickets.requested_path(await self._body(request))
        try:
            found = self._routes.router.find("GET", path)
        except RouteNotFound:
            raise answers.refusal(
                grpc.StatusCode.NOT_FOUND, "no stream at this path", "STREAM_TICKET_PATH"
            ) from None
        except MethodNotAllowed:
            found = None
        if found is None or not found.route.server_streaming:
            raise answers.refusal(
                grpc.StatusCode.INVALID_ARGUMENT, "this path is not a GET stream", "STREAM_TICKET_PATH"
            )
        issued = store.issue(token, path, address=client.address)
        answer = Response(201, json.dumps({"ticket": issued.ticket, "expiresIn": issued.expires_in}).encode())
        answer.headers["Cache-Control"] = "no-store"
        return answer

    def _vouch(self, token: str, client: _Client) -> None:
        """Refuse a token the edge's verifier refuses (401) or cannot check now (503: its keys
        not fetched yet, or a ``kid`` it does not know): a ticket is only ever issued for a
        token the edge has checked, so junk cannot fill the store."""
        if self._vouch_for is None or client.key.startswith("principal:"):
            return  # a store given without a verifier (tests), or the rate limit's look-up vouched
        try:
            principal = self._vouch_for(token)
        except OutsideToken:
            raise answers.refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                "stream tickets are issued for this deployment's own tokens: open the stream with "
                "the Authorization header instead",
                "STREAM_TICKET_OUTSIDE_TOKEN",
            ) from None
        except CannotVerify:
            raise answers.refusal(
                grpc.StatusCode.UNAVAILABLE,
                "the access token cannot be checked now: try again shortly",
                "TOKEN_UNVERIFIABLE",
                extra=answers.retry_after(1.0),
            ) from None
        if principal is None:
            raise self._invalid_token(client)

    def _invalid_token(self, client: _Client) -> answers.Refusal:
        """401 for a token the edge refuses, counted as a failed authentication of the client."""
        self._failed_authentication(client)
        return answers.refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "the access token is not valid",
            "TOKEN_INVALID",
            extra={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    def _failed_authentication(self, client: _Client) -> None:
        if self._failures is not None and not client.failure_counted:
            self._failures.record(client.address)
            client.failure_counted = True

    def _take_ticket(self, request: Request) -> tickets.Claim:
        """The query's parameters, any stream ticket among them spent now: a ticket is spent
        by the request presenting it, whatever comes of that request."""
        parameters = list(request.query.items())
        return self._tickets.take(parameters) if self._tickets is not None else tickets.Claim(parameters)

    def _open_ticket(self, request: Request, claim: tickets.Claim, plan: Plan) -> str | None:
        """The bearer token of the ticket `claim` holds, if any: only a GET (or HEAD) of a
        server stream takes one, without an Authorization header, at the ticket's path."""
        if not claim.presented or self._tickets is None:
            return None
        return self._tickets.open(
            claim,
            path=request.raw_path.partition("?")[0],
            takes_ticket=plan.streaming and request.method in _TICKET_METHODS,
            authorized="Authorization" in request.headers,
        )

    # -- transcoding -----------------------------------------------------------------------

    def _client_address(self, request: Request) -> str:
        if not self._trusted:  # no proxy to believe: the peer is the client
            return request.remote or ""
        return headers.client_address(
            request.remote or "", request.headers.getall("X-Forwarded-For", []), self._trusted
        )

    async def _handle(self, request: Request, serve: _Serve | None = None) -> Response | Stream:
        exchange: Exchange = request.exchange
        request_id = exchange.request_id
        client = _Client(exchange.client)
        try:
            return await (serve or self._transcode)(request, exchange, client)
        except answers.Refusal as refused:
            return self._error(request, refused.status, refused.http, refused.extra)
        except tickets.TicketError as error:
            if isinstance(error, tickets.InvalidTicket | tickets.TokenExpired):
                self._failed_authentication(client)
            ticket = answers.ticket_refusal(error)
            return self._error(request, ticket.status, ticket.http, ticket.extra)
        except errors.BadRequest as bad:
            code = grpc.StatusCode.INVALID_ARGUMENT
            status = errors.status_message(
                code, str(bad), reason="INVALID_REQUEST", violations=bad.violations
            )
            return self._error(request, status, 400)
        except grpc.aio.AioRpcError as failed:
            status = errors.status_of_rpc_error(failed)
            extra: dict[str, str] = {}
            if failed.code() == grpc.StatusCode.UNAUTHENTICATED:
                extra["WWW-Authenticate"] = "Bearer"
                self._failed_authentication(client)
            metadata = (list(failed.initial_metadata() or ()), list(failed.trailing_metadata() or ()))
            return self._error(request, status, errors.http_status(failed.code()), extra, metadata)
        except Exception:  # noqa: BLE001 - one error shape for every failure, logged with its cause
            _log.exception("unexpected error", extra={"path": request.path, "request_id": request_id})
            status = errors.status_message(grpc.StatusCode.INTERNAL, "internal error", reason="INTERNAL")
            return self._error(request, status, 500)

    @staticmethod
    def _json(reply: Message, route: Route) -> bytes:
        if route.response_body:
            return jsoncodec.field_to_json(reply, route.response_body)
        return jsoncodec.to_json(reply)

    def _error(
        self,
        request: Request,
        status: status_pb2.Status,
        http: int,
        extra: dict[str, str] | None = None,
        metadata: tuple[list[answers.Metadata], list[answers.Metadata]] = ([], []),
    ) -> Response:
        # X-Request-Id is added by the observing wrapper, as on every answer. Metadata a method
        # may declare as headers of its own (a cookie, a redirect) goes nowhere: it failed.
        response = answers.answer_with_metadata(
            request,
            http,
            errors.render_status(status),
            *metadata,
            declared=headers.DECLARABLE_HEADERS,
            succeeded=False,
        )
        if extra:
            response.headers.update(extra)
        return response

    def _route(self, request: Request, routes: Compiled) -> tuple[Route, dict[str, str]]:
        path = request.raw_path.split("?", 1)[0]
        try:
            try:
                found = routes.router.find(request.method, path)
            except (RouteNotFound, MethodNotAllowed):
                if request.method != "HEAD":
                    raise
                # HEAD is GET without the body (RFC 9110 §9.3.2): the server drops the body.
                found = routes.router.find("GET", path)
        except RouteNotFound:
            raise answers.refusal(
                grpc.StatusCode.NOT_FOUND, "no route for this path", "ROUTE_NOT_FOUND"
            ) from None
        except MethodNotAllowed as wrong:
            allowed = [*wrong.allowed, "HEAD"] if "GET" in wrong.allowed else wrong.allowed
            raise answers.refusal(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{request.method} is not allowed here",
                "METHOD_NOT_ALLOWED",
                http=405,
                extra={"Allow": ", ".join(sorted(set(allowed)))},
            ) from None
        return found.route, found.variables

    def _identify(self, request: Request, client: _Client) -> None:
        """Set `client`'s bucket, and count a token the verifier refuses as a failure."""
        client.key = f"address:{client.address}"
        if self._verify_token is None:
            return
        token = bearer_token(request.headers.getall("Authorization", []))
        if token is None:
            return
        try:
            principal = self._verify_token(token)
        except CannotVerify:
            return  # the backend decides; its UNAUTHENTICATED is counted then
        if principal is not None:
            client.key = f"principal:{principal}"
        else:
            self._failed_authentication(client)

    def _limit_rate(self, request: Request, client: _Client) -> None:
        if self._failures is not None and (wait := self._failures.wait(client.address)):
            raise answers.refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many failed authentications from this address",
                "AUTHENTICATION_THROTTLED",
                extra=answers.retry_after(wait),
            )
        self._identify(request, client)
        if self._buckets is not None and (wait := self._buckets.take(client.key)):
            raise answers.refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "too many requests",
                "RATE_LIMITED",
                extra=answers.retry_after(wait),
            )

    async def _message(
        self,
        request: Request,
        route: Route,
        plan: Plan,
        variables: dict[str, str],
        parameters: list[tuple[str, str]],
    ) -> Message:
        message = plan.request_class()
        parsed = None
        if plan.raw_body is not None:  # google.api.HttpBody: the bytes as sent, and their type
            body: Any = message if not plan.raw_body else getattr(message, plan.raw_body)
            body.data = await self._body(request, json=False)
            body.content_type = request.headers.get("Content-Type", "")
        elif route.body:
            parsed = jsoncodec.parse_json(
                await self._body(request),
                message,
                max_depth=self._settings.max_json_depth,
                field=plan.body_field,
            )
        query.apply_variables(message, variables)
        query.apply_query(
            message,
            parameters,
            body_fields=(*plan.body_fields, *route.template.variables),
            ignore=self._settings.ignored_query_parameters,
            ignore_unknown=plan.lenient_query,
        )
        if plan.patch_mask is not None:
            plan.patch_mask.fill(message, parsed)
        return message

    async def _body(self, request: Request, *, json: bool = True) -> bytes:
        """The body, said to be JSON (else 415) unless `json` is False, once it has arrived
        (413 past the limit)."""
        if json:
            answers.require_json(request)
        await self._expect(request)
        try:
            return await request.read()
        except wire.BodyTooLarge:
            raise answers.refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the body is larger than {self._settings.max_body_bytes} bytes",
                "BODY_TOO_LARGE",
                http=413,
            ) from None

    @staticmethod
    async def _expect(request: Request) -> None:
        """Answer an ``Expect: 100-continue`` before reading the body (curl waits a second for
        it on bodies over 1 KB); refuse any other expectation with 417 (RFC 9110, 10.1.1)."""
        expect = request.headers.get("Expect")
        if expect is None or request.version != HTTP_11:
            return
        if expect.lower() != "100-continue":
            raise answers.refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                "the only expectation this server meets is 100-continue",
                "EXPECTATION_FAILED",
                http=417,
            )
        await request.send_continue()

    async def _transcode(self, request: Request, exchange: Exchange, client: _Client) -> Response | Stream:
        routes = self._routes  # one routing per request, even if a reload swaps it meanwhile
        claim = self._take_ticket(request)
        route, variables = self._route(request, routes)
        exchange.routed(route.template.text)
        plan = routes.plans[id(route)]
        self._limit_rate(request, client)
        token = self._open_ticket(request, claim, plan)
        message = await self._message(request, route, plan, variables, claim.query)
        timeout_header = request.headers.get("Grpc-Timeout")
        timeout = (
            headers.parse_grpc_timeout(timeout_header)
            if timeout_header is not None
            else (None if plan.streaming else self._settings.timeout_seconds)
        )
        observer = self._observer
        sent = list(request.headers.items())
        if token is not None:  # the ticket's token goes on exactly as its header would have
            sent.append(("Authorization", f"Bearer {token}"))
        metadata = headers.outgoing_metadata(
            sent,
            client_ip=client.address,
            host=request.host,
            request_id=exchange.request_id,
            header_matcher=headers.forwarding_matcher(plan.forwarded_headers),
            forward_trace_context=observer.passes_trace_context(request),
        )
        service = plan.service
        target = self._backends.target(service)
        channel = self._backends.channel_to(target)
        backend = observer.call(
            exchange,
            service,
            route.method.name,
            streaming=plan.streaming,
            target=target.address,
            metadata=metadata,
        )
        if plan.streaming:
            return await self._stream(
                request,
                route=route,
                plan=plan,
                channel=channel,
                message=message,
                metadata=metadata,
                timeout=timeout,
                exchange=exchange,
                backend=backend,
            )
        try:
            call = backend_method(channel.unary_unary, route, plan)(
                message, metadata=metadata, timeout=timeout
            )
            reply: Message = await call
        except BaseException as error:
            backend.fail(error)
            raise
        backend.end(grpc.StatusCode.OK)
        initial: list[answers.Metadata] = list(await call.initial_metadata() or ())
        trailing: list[answers.Metadata] = list(await call.trailing_metadata() or ())
        if plan.raw_reply is not None:  # google.api.HttpBody: its bytes, as the type it names
            part = getattr(reply, plan.raw_reply) if plan.raw_reply else reply
            return answers.raw_answer(
                request, plan.success, part, initial, trailing, declared=plan.response_headers
            )
        body = b"" if plan.success == 204 else self._json(reply, route)
        return answers.answer_with_metadata(
            request, plan.success, body, initial, trailing, declared=plan.response_headers
        )

    async def _stream(
        self,
        request: Request,
        *,
        route: Route,
        plan: Plan,
        channel: grpc.aio.Channel,
        message: Message,
        metadata: list[tuple[str, str | bytes]],
        timeout: float | None,
        exchange: Exchange,
        backend: BackendCall,
    ) -> Stream:
        sse = streaming.wants_sse(request.headers.get("Accept", ""))
        try:
            call = backend_method(channel.unary_stream, route, plan)(
                message, metadata=metadata, timeout=timeout
            )
            # Wait for the backend's headers first: a call refused at once (authentication,
            # a bad name) is answered with its own HTTP status, not a 200 with an error line.
            try:
                initial = await call.initial_metadata()
            except asyncio.CancelledError:
                call.cancel()
                raise
            if call.done() and (await call.code()) != grpc.StatusCode.OK:
                raise grpc.aio.AioRpcError(
                    await call.code(), initial, await call.trailing_metadata(), await call.details()
                )
        except BaseException as error:
            backend.fail(error)
            raise
        response = Stream(200, content_type=streaming.SSE if sse else streaming.NDJSON)
        response.headers["X-Request-Id"] = exchange.request_id
        response.headers["Cache-Control"] = "no-cache"
        for name, value in headers.response_headers(list(initial or ()), []):
            response.headers.add(name, value)
        try:
            await response.prepare(request)
            # The stream's span and access line end with the stream: from here on, they report
            # this answer's status (and the bytes counted) even when the client leaves.
            exchange.response = response
            if request.method == "HEAD":  # the head is the whole answer: the stream ends here
                call.cancel()
                backend.end(grpc.StatusCode.CANCELLED)
                await response.write_eof()
                return response
            async for reply in call:
                body = self._json(reply, route)
                chunk = streaming.sse_event(body) if sse else streaming.ndjson_result(body)
                exchange.body_bytes += len(chunk)
                await response.write(chunk)
            backend.end(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as failed:
            backend.end(failed.code())
            status = errors.render_status(errors.status_of_rpc_error(failed))
            chunk = streaming.sse_event(status, event="error") if sse else streaming.ndjson_error(status)
            exchange.body_bytes += len(chunk)
            await response.write(chunk)
        except ConnectionResetError:
            call.cancel()  # the client left: so does the backend call
            backend.end(grpc.StatusCode.CANCELLED)
            return response  # nothing more can be sent
        except BaseException as error:
            call.cancel()  # the client left (cancelled), or the edge failed: so does the backend call
            backend.fail(error)
            raise
        await response.write_eof()
        return response
