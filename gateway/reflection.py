"""Descriptors from the backends themselves, over gRPC server reflection.

Each backend is asked (``grpc.reflection.v1``, else ``v1alpha``: the messages are the same on
the wire) which services it serves and for the files that define them, following imports
until every file is known. The result is a `DescriptorSet` like one read from a file, so the
rest of the edge cannot tell where its routes came from (reflected files usually carry no
comments, so the OpenAPI document then has no descriptions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection_pb2

from gateway.descriptors import DescriptorSet, DescriptorSetError

__all__ = ["ReflectionError", "reflect"]

_METHODS = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
_INFRASTRUCTURE = ("grpc.reflection.", "grpc.health.")
_MAX_FILES = 10_000
"""More files than any real API imports: a backend naming new imports forever is refused."""
"""Services every gRPC server may carry that are not its API."""


class ReflectionError(DescriptorSetError):
    """A backend could not be reflected: unreachable, without reflection, or inconsistent."""


class _Session:
    """Reflection requests to one backend.

    Each request is its own call of the bidirectional method, made as a unary call: one
    message and the half-close go out in one batch, so a server without the method answers
    UNIMPLEMENTED cleanly instead of racing a second write (which grpc reports as INTERNAL).
    """

    def __init__(self, channel: grpc.aio.Channel, address: str, timeout: float) -> None:
        self._channel, self._address, self._timeout = channel, address, timeout
        self._method: str | None = None

    async def _call(
        self, method: str, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        call = self._channel.unary_unary(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            # Waits for a backend still starting (a container beside the edge), up to the timeout.
            reply: reflection_pb2.ServerReflectionResponse = await call(
                request, timeout=self._timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED and self._method is None:
                raise
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ReflectionError(
                    f"cannot reach {self._address} within {self._timeout:g} s: "
                    f"{await self._last_connection_error(call, request)}"
                ) from None
            why = f"{error.code().name} {error.details() or ''}".rstrip()
            raise ReflectionError(f"cannot reflect {self._address}: {why}") from None
        if reply.HasField("error_response"):
            error_response = reply.error_response
            why = error_response.error_message or str(error_response.error_code)
            raise ReflectionError(f"{self._address} reflection: {why}")
        return reply

    async def _last_connection_error(
        self, call: grpc.aio.UnaryUnaryMultiCallable, request: reflection_pb2.ServerReflectionRequest
    ) -> str:
        """Why connecting fails (a refused port, a TLS handshake with the wrong transport...):
        grpc names it only to a call that does not wait for the connection."""
        try:
            await call(request, timeout=min(2.0, self._timeout))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and error.details():
                return str(error.details())
        return "is it up, and is its transport the one configured (plaintext, TLS, mTLS)?"

    async def ask(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        if self._method is not None:
            return await self._call(self._method, request)
        for method in _METHODS:
            try:
                reply = await self._call(method, request)
            except grpc.aio.AioRpcError:  # UNIMPLEMENTED: try the other version
                continue
            self._method = method
            return reply
        raise ReflectionError(f"{self._address} does not serve gRPC server reflection (v1 or v1alpha)")

    async def services(self) -> list[str]:
        reply = await self.ask(reflection_pb2.ServerReflectionRequest(list_services=""))
        return sorted(
            s.name for s in reply.list_services_response.service if not s.name.startswith(_INFRASTRUCTURE)
        )

    async def files(self, services: Iterable[str]) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        """Every file defining `services`, with all the files they import."""
        found: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        asked: set[str] = set()
        requests = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=s) for s in services]
        while requests:
            try:
                async with asyncio.TaskGroup() as group:  # one failure cancels the others
                    asking = [group.create_task(self.ask(request)) for request in requests]
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from None
            for reply in (task.result() for task in asking):
                for raw in reply.file_descriptor_response.file_descriptor_proto:
                    try:
                        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
                    except DecodeError:
                        raise ReflectionError(
                            f"{self._address} sent a file descriptor that does not parse"
                        ) from None
                    found.setdefault(file.name, file)
            missing = {d for f in found.values() for d in f.dependency} - set(found)
            if missing & asked:  # asked for by name already, and still not sent
                raise ReflectionError(f"{self._address} did not send {', '.join(sorted(missing & asked))}")
            if len(found) + len(missing) > _MAX_FILES:
                raise ReflectionError(f"{self._address} names more than {_MAX_FILES} files")
            asked |= missing
            requests = [reflection_pb2.ServerReflectionRequest(file_by_filename=n) for n in sorted(missing)]
        return found


async def reflect(
    channels: Mapping[str, grpc.aio.Channel],
    wanted: Mapping[str, Iterable[str] | None],
    *,
    timeout: float = 10.0,
) -> tuple[DescriptorSet, dict[str, list[str]]]:
    """The descriptors of the services behind each address of `channels`.

    `wanted` names, per address, the services that must be there (each missing one is an
    error), or None for "every service it serves". Returns the set and the services found per
    address.
    """
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    served: dict[str, list[str]] = {}
    problems: list[str] = []
    for address, channel in channels.items():
        session = _Session(channel, address, timeout)
        listed = await session.services()
        names = wanted.get(address)
        if names is None:
            chosen = listed
        else:
            chosen = sorted(set(names))
            problems += [
                f"{address} does not serve {name} (it serves: {', '.join(listed) or 'nothing'})"
                for name in chosen
                if name not in listed
            ]
        served[address] = [name for name in chosen if name in listed]
        if problems:
            continue
        for name, file in (await session.files(served[address])).items() if served[address] else ():
            files.setdefault(name, file)
    if problems:
        raise ReflectionError("; ".join(problems))
    return DescriptorSet(_pool(files), list(files.values())), served


def _pool(files: Mapping[str, descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """A pool holding `files`, each added after the files it imports (depth-first, without
    recursion, so a long import chain cannot exhaust the stack)."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for root in sorted(files):
        stack: list[tuple[str, bool]] = [(root, False)]
        on_path: set[str] = set()
        while stack:
            name, imports_added = stack.pop()
            if imports_added:
                on_path.discard(name)
                _add(pool, files[name])
                added.add(name)
                continue
            if name in added:
                continue
            if name in on_path:
                raise ReflectionError(f"import cycle through {name}")
            if name not in files:
                raise ReflectionError(f"the backends did not provide {name}")
            on_path.add(name)
            stack.append((name, True))
            stack.extend((dependency, False) for dependency in reversed(files[name].dependency))
    return pool


def _add(pool: descriptor_pool.DescriptorPool, file: descriptor_pb2.FileDescriptorProto) -> None:
    try:
        pool.Add(file)
    except (TypeError, ValueError) as error:
        raise ReflectionError(f"{file.name}: {error}") from None
