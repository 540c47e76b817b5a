"""The generic edge in front of a gRPC service that is not Polyservice's.

A proto written here (``acme.library.v1``) carries its own `google.api.http` rules, one of each
form; it is compiled with grpc_tools into a descriptor set, served by a plain `grpc.server`
over mTLS with a certificate from the dev CA, and ``python -m gateway`` is started in front of
it as a standalone ``poly gateway`` twice: once with routes from that set
(``--descriptor-set``), once from the backend's own server reflection (``--reflect``). Every
case is a plain HTTP request through the edge, and both sources pass the same table.
"""

# ruff: noqa: N802 - the servicer's methods carry the RPC names of the generated base

from __future__ import annotations

import base64
import gzip
import http.client
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli
import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.api import httpbody_pb2
from google.protobuf import any_pb2, empty_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from services.kit import config, tls
from tests.gateway.conftest import STANDALONE
from tests.support.env import free_port
from tests.support.h2client import H2Client, h2_call
from tests.support.http import Answer, http_call, http_calls_with_trailers, raw_exchange
from tests.support.http_server import curl
from tests.support.processes import Process
from tests.support.protos import compile_proto

pytestmark = pytest.mark.slow

PROTO = """
syntax = "proto3";

package acme.library.v1;

import "google/api/annotations.proto";
import "google/api/httpbody.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";
import "poly/options/v1/options.proto";

// A lending library: nothing to do with Polyservice.
service LibraryService {
  rpc GetBook(GetBookRequest) returns (Book) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*/books/*}"
      additional_bindings { get: "/v2/library/{name=shelves/*/books/*}" }
    };
  }
  rpc CheckBook(GetBookRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { custom: { kind: "HEAD" path: "/v1/{name=shelves/*/books/*}" } };
  }
  rpc GetFile(GetFileRequest) returns (File) {
    option (google.api.http) = { get: "/v1/{path=files/**}" };
  }
  rpc CreateBook(CreateBookRequest) returns (Book) {
    option (google.api.http) = {
      post: "/v1/{parent=shelves/*}/books"
      body: "book"
      additional_bindings { put: "/v1/{parent=shelves/*}/books:create" body: "*" }
    };
  }
  rpc UpdateBook(UpdateBookRequest) returns (Book) {
    option (google.api.http) = { patch: "/v1/{book.name=shelves/*/books/*}" body: "book" };
  }
  rpc ArchiveShelf(ArchiveShelfRequest) returns (Shelf) {
    option (google.api.http) = { post: "/v1/{name=shelves/*}:archive" body: "*" };
  }
  rpc ListBooks(ListBooksRequest) returns (ListBooksResponse) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books" response_body: "books" };
  }
  rpc DeleteBook(GetBookRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { delete: "/v1/{name=shelves/*/books/*}" };
  }
  // Answers with the request it received, to show how the query was mapped.
  rpc SearchBooks(SearchBooksRequest) returns (SearchBooksRequest) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books:search" };
  }
  // The same, ignoring parameters that name no field (as an OAuth authorization endpoint).
  rpc BrowseBooks(SearchBooksRequest) returns (SearchBooksRequest) {
    option (google.api.http) = { get: "/v1/{parent=shelves/*}/books:browse" };
    option (poly.options.v1.ignore_unknown_query) = true;
  }
  // Answers with the metadata it received; sends header metadata and trailers.
  rpc Echo(EchoRequest) returns (EchoResponse) {
    option (google.api.http) = { post: "/v1/echo" body: "*" };
  }
  rpc Fail(FailRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { get: "/v1/errors/{code}" };
  }
  rpc Sleep(SleepRequest) returns (google.protobuf.Empty) {
    option (google.api.http) = { get: "/v1/sleep/{delay}" };
  }
  // Answers with the request it received: bytes in a path variable.
  rpc GetChunk(GetChunkRequest) returns (GetChunkRequest) {
    option (google.api.http) = { get: "/v1/chunks/{id}" };
  }
  // Answers with the request it received: a body bound to a google.api.HttpBody field.
  rpc UploadCover(UploadCoverRequest) returns (UploadCoverRequest) {
    option (google.api.http) = { post: "/v1/{name=shelves/*/books/*}:uploadCover" body: "cover" };
  }
  // Answers with the cover it was sent as the reply itself, a google.api.HttpBody (the note,
  // when given, is the content type it claims).
  rpc EchoCover(UploadCoverRequest) returns (google.api.HttpBody) {
    option (google.api.http) = { post: "/v1/{name=shelves/*/books/*}:echoCover" body: "cover" };
  }
  // A reply whose response_body is an HttpBody field.
  rpc ExportShelf(ExportShelfRequest) returns (ShelfExport) {
    option (google.api.http) = { get: "/v1/{name=shelves/*}:export" response_body: "file" };
  }
  // Lets a reader in: a 303 to where they were going, with a cookie; a wrong ticket gets a
  // page with 401. Sent as metadata the edge answers as headers and status.
  rpc EnterReadingRoom(EnterReadingRoomRequest) returns (google.api.HttpBody) {
    option (google.api.http) = { post: "/v1/readingRoom:enter" body: "*" };
    option (poly.options.v1.response_headers) = "location";
    option (poly.options.v1.response_headers) = "set-cookie";
    option (poly.options.v1.response_headers) = "x-http-code";
  }
  rpc WatchShelf(WatchShelfRequest) returns (stream ShelfEvent) {
    option (google.api.http) = {
      get: "/v1/{name=shelves/*}:watch"
      additional_bindings { get: "/v1/{name=shelves/*}/books:watch" response_body: "book" }
    };
  }
}

enum Genre {
  GENRE_UNSPECIFIED = 0;
  FICTION = 1;
  SCIENCE = 2;
}

message Book {
  string name = 1;
  string title = 2;
  Genre genre = 3;
  int64 pages = 4;
  google.protobuf.Timestamp published_at = 5;
  bytes cover = 6;
  Range size = 7;
  repeated string tags = 8;
  map<string, string> labels = 9;
}

message Shelf {
  string name = 1;
  bool archived = 2;
  string reason = 3;
}

message File { string path = 1; }

message GetBookRequest { string name = 1; }
message GetFileRequest { string path = 1; }

message CreateBookRequest {
  string parent = 1;
  string book_id = 2;
  Book book = 3;
}

message UpdateBookRequest {
  Book book = 1;
  google.protobuf.FieldMask update_mask = 2;
}

message ArchiveShelfRequest {
  string name = 1;
  string reason = 2;
}

message ListBooksRequest {
  string parent = 1;
  int32 page_size = 2;
}

message ListBooksResponse {
  repeated Book books = 1;
  string next_page_token = 2;
}

message Range {
  int32 min = 1;
  int32 max = 2;
}

message Filter {
  Genre genre = 1;
  Range pages = 2;
}

message SearchBooksRequest {
  string parent = 1;
  Filter filter = 2;
  repeated string tags = 3;
  repeated Genre genres = 4;
  bytes cursor = 5;
  google.protobuf.Timestamp after = 6;
  google.protobuf.Duration max_age = 7;
  google.protobuf.FieldMask read_mask = 8;
  google.protobuf.Int32Value min_pages = 9;
  google.protobuf.BoolValue available = 10;
  google.protobuf.StringValue author = 11;
  int64 limit = 12;
  double score = 13;
}

message EchoRequest { string text = 1; }

message EchoResponse {
  string text = 1;
  map<string, string> metadata = 2;
}

message FailRequest {
  string code = 1;
  bool rich = 2;
}

message SleepRequest { google.protobuf.Duration delay = 1; }

message GetChunkRequest { bytes id = 1; }

message UploadCoverRequest {
  string name = 1;
  google.api.HttpBody cover = 2;
  string note = 3;
}

message ExportShelfRequest { string name = 1; }

message EnterReadingRoomRequest {
  string ticket = 1;
  string next = 2;
  string code = 3;
}

message ShelfExport {
  google.api.HttpBody file = 1;
  int32 books = 2;
}

message WatchShelfRequest {
  string name = 1;
  int32 count = 2;
  int32 fail_after = 3;
}

message ShelfEvent {
  int32 sequence = 1;
  Book book = 2;
}
"""


class Library:
    """An in-memory servicer for every method of LibraryService; records the metadata it saw."""

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.lock = threading.Lock()
        self.books: dict[str, Any] = {}
        self.shelves: dict[str, Any] = {}
        self.seen: list[dict[str, str]] = []
        self.masks: dict[str, list[str]] = {}
        """The update_mask each UpdateBook call got, by book name."""
        self.sleeping = threading.Event()
        self.abandoned = threading.Event()
        """Set when a Sleep call ended because its caller cancelled it."""
        for shelf in ("shelves/1", "shelves/2", "shelves/3", "shelves/4"):
            self.shelves[shelf] = pb.Shelf(name=shelf, archived=shelf == "shelves/4")
        for name, title, genre, pages in [
            ("shelves/1/books/dune", "Dune", 1, 412),
            ("shelves/1/books/edit-me", "Draft", 1, 10),
            ("shelves/1/books/doomed", "Doomed", 2, 1),
            ("shelves/3/books/a", "Alpha", 2, 9007199254740993),
            ("shelves/3/books/b", "Beta", 1, 2),
        ]:
            book = pb.Book(name=name, title=title, genre=genre, pages=pages)
            book.published_at.FromJsonString("2020-02-29T12:00:00Z")
            self.books[name] = book

    def _book(self, name: str, context: grpc.ServicerContext) -> Any:
        with self.lock:
            found = self.books.get(name)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no book {name}")
        return found

    def GetBook(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._book(request.name, context)

    def CheckBook(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._book(request.name, context)
        return empty_pb2.Empty()

    def GetFile(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.pb.File(path=request.path)

    def CreateBook(self, request: Any, context: grpc.ServicerContext) -> Any:
        name = f"{request.parent}/books/{request.book_id}"
        with self.lock:
            if name in self.books:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} exists")
            book = self.pb.Book()
            book.CopyFrom(request.book)
            book.name = name
            self.books[name] = book
        return book

    def UpdateBook(self, request: Any, context: grpc.ServicerContext) -> Any:
        book = self._book(request.book.name, context)
        with self.lock:
            self.masks[request.book.name] = list(request.update_mask.paths)
            if request.update_mask.paths:
                request.update_mask.MergeMessage(request.book, book, replace_message_field=True)
            else:
                book.MergeFrom(request.book)
        return book

    def ArchiveShelf(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            shelf = self.shelves.get(request.name)
            if shelf is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no shelf {request.name}")
                raise AssertionError("abort raises")
            if shelf.archived:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.name} is already archived")
            shelf.archived, shelf.reason = True, request.reason
            return shelf

    def ListBooks(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            books = [b for n, b in sorted(self.books.items()) if n.startswith(request.parent + "/")]
        return self.pb.ListBooksResponse(books=books[: request.page_size or None], next_page_token="more")

    def DeleteBook(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            if self.books.pop(request.name, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no book {request.name}")
        return empty_pb2.Empty()

    def SearchBooks(self, request: Any, context: grpc.ServicerContext) -> Any:
        return request

    def BrowseBooks(self, request: Any, context: grpc.ServicerContext) -> Any:
        return request

    def Echo(self, request: Any, context: grpc.ServicerContext) -> Any:
        seen = {
            key: base64.b64encode(value).decode() if isinstance(value, bytes) else value
            for key, value in context.invocation_metadata()
        }
        with self.lock:
            self.seen.append(seen)
        context.send_initial_metadata((("x-served-by", "library"), ("x-blob-bin", b"\x01\x02\xff")))
        context.set_trailing_metadata((("x-cost", "3"),))
        return self.pb.EchoResponse(text=request.text, metadata=seen)

    def Fail(self, request: Any, context: grpc.ServicerContext) -> Any:
        code = grpc.StatusCode[request.code]
        if request.rich:
            details = [
                error_details_pb2.ErrorInfo(reason="SHELF_LOCKED", domain="library.acme.example"),
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field="shelf", description="locked")
                    ]
                ),
            ]
            packed = []
            for detail in details:
                any_detail = any_pb2.Any()
                any_detail.Pack(detail)
                packed.append(any_detail)
            status = status_pb2.Status(code=code.value[0], message="the shelf is locked", details=packed)
            context.abort_with_status(rpc_status.to_status(status))
        context.send_initial_metadata((("x-served-by", "library"),))
        context.set_trailing_metadata((("x-cost", "1"), ("x-trace-bin", b"\x00\xff")))
        context.abort(code, f"failing with {request.code}")

    def Sleep(self, request: Any, context: grpc.ServicerContext) -> Any:
        end = time.monotonic() + request.delay.ToTimedelta().total_seconds()
        self.sleeping.set()
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        if not context.is_active():
            self.abandoned.set()
        return empty_pb2.Empty()

    def GetChunk(self, request: Any, context: grpc.ServicerContext) -> Any:
        return request

    def UploadCover(self, request: Any, context: grpc.ServicerContext) -> Any:
        return request

    def EchoCover(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.note:
            request.cover.content_type = request.note
        return request.cover

    def EnterReadingRoom(self, request: Any, context: grpc.ServicerContext) -> Any:
        page = httpbody_pb2.HttpBody(content_type="text/html; charset=utf-8")
        if request.ticket == "valid" and request.code:  # a valid ticket, and then trouble
            cookie, status = ("set-cookie", "room=reader-1; HttpOnly"), ("x-http-code", "303")
            context.send_initial_metadata((cookie, ("location", request.next), status))
            if request.code == "fail":
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "the room is closed")
            context.set_trailing_metadata((("x-http-code", request.code),))
            return page
        if request.ticket != "valid":
            context.set_trailing_metadata((("x-http-code", request.code or "401"),))
            page.data = b"<p>That ticket is not valid.</p>"
            return page
        context.send_initial_metadata(
            (
                ("location", request.next),
                ("set-cookie", "room=reader-1; Secure; HttpOnly; SameSite=Lax"),
                ("x-http-code", "303"),
                ("x-request-id", "spoofed"),  # not declarable: it keeps its prefix
                ("x-note", "undeclared"),
            )
        )
        return page

    def ExportShelf(self, request: Any, context: grpc.ServicerContext) -> Any:
        export = self.pb.ShelfExport(books=1)
        export.file.content_type = "text/csv; charset=utf-8"
        export.file.data = f"shelf,title\n{request.name},Dune\n".encode()
        return export

    def WatchShelf(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if request.fail_after < 0:  # refused before anything is sent
            context.abort(grpc.StatusCode.NOT_FOUND, f"no shelf {request.name}")
        context.send_initial_metadata((("x-watch", "on"),))
        for sequence in range(1, request.count + 1):
            if request.fail_after and sequence > request.fail_after:
                context.abort(grpc.StatusCode.ABORTED, "the shelf moved")
            book = self.pb.Book(name=f"{request.name}/books/{sequence}")
            yield self.pb.ShelfEvent(sequence=sequence, book=book)


@dataclass
class Edge:
    port: int
    library: Library
    process: Process
    backend_port: int
    certs: Path
    source: list[str]
    """The flags naming the edge's route source."""

    def call(
        self, method: str, path: str, body: object = None, *, headers: dict[str, str] | None = None
    ) -> Answer:
        return http_call(self.port, method, path, body, headers=headers, timeout=15)


SHOP = "https://shop.example"
"""The one origin the edge allows cross-origin calls from."""


@pytest.fixture(scope="module", params=["descriptor-set", "reflection"])
def edge(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    home = tmp_path_factory.mktemp("foreign")
    generated = home / "generated"
    generated.mkdir()
    descriptor_set = compile_proto(generated, "acme/library/v1/library.proto", PROTO, python=True)
    sys.path.insert(0, str(generated))
    try:
        pb = importlib.import_module("acme.library.v1.library_pb2")
        pb_grpc = importlib.import_module("acme.library.v1.library_pb2_grpc")
    finally:
        sys.path.remove(str(generated))
    certs = home / "certs"
    tls.ensure_certificates(certs, config.COMPONENTS)
    server_tls = config.TlsSettings(certs / "ca.crt", certs / "users.crt", certs / "users.key")
    library = Library(pb)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_LibraryServiceServicer_to_server(library, server)
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["LibraryService"].full_name, reflection.SERVICE_NAME), server
    )
    backend_port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(server_tls))
    server.start()
    port = free_port()
    source = ["--descriptor-set", str(descriptor_set)] if request.param == "descriptor-set" else ["--reflect"]
    process = Process.module(
        "gateway",
        STANDALONE,
        *source,
        f"--backend=acme.library.v1.LibraryService=localhost:{backend_port}",
        f"--listen=127.0.0.1:{port}",
        f"--cacert={certs / 'ca.crt'}",
        f"--cert={certs / 'gateway.crt'}",
        f"--key={certs / 'gateway.key'}",
        f"--cors-origin={SHOP}",
    )
    try:
        process.wait_for_line(lambda line: '"serving"' in line, timeout=30)
        yield Edge(port, library, process, backend_port, certs, source)
    finally:
        process.stop()
        server.stop(grace=None)
        for name in [m for m in sys.modules if m == "acme" or m.startswith("acme.")]:
            del sys.modules[name]


def _contains(actual: Any, expected: Any, where: str = "$") -> None:
    """`expected` is a fragment of `actual`: dict keys recursively, lists item by item."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: no {key!r} in {actual!r}"
            _contains(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _contains(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: expected {expected!r}, got {actual!r}"


# (method, path, query, body, status, JSON fragment of the answer)
Case = tuple[str, str, str, object, int, Any]

RULE_FORMS: list[Case | Any] = [
    ("GET", "/v1/shelves/1/books/dune", "", None, 200, {"name": "shelves/1/books/dune", "title": "Dune"}),
    ("GET", "/v2/library/shelves/1/books/dune", "", None, 200, {"title": "Dune"}),
    ("GET", "/v1/shelves/1/books/dune", "", None, 200, {"pages": "412", "genre": "FICTION"}),
    ("GET", "/v1/shelves/1/books/dune", "", None, 200, {"publishedAt": "2020-02-29T12:00:00Z"}),
    ("GET", "/v1/shelves/1/books/nope", "", None, 404, {"code": 5, "details": []}),
    ("GET", "/v1/shelves/1/books/caf%C3%A9", "", None, 404, {"message": "no book shelves/1/books/café"}),
    ("GET", "/v1/files/a/b/c.txt", "", None, 200, {"path": "files/a/b/c.txt"}),
    ("GET", "/v1/files", "", None, 200, {"path": "files"}),
    ("GET", "/v1/files/dir%2Fname/x%20y", "", None, 200, {"path": "files/dir%2Fname/x y"}),
    (
        "POST",
        "/v1/shelves/2/books",
        "bookId=new",
        {"title": "New", "pages": 7},
        200,
        {"name": "shelves/2/books/new", "title": "New", "pages": "7"},
    ),
    (
        "POST",
        "/v1/shelves/2/books",
        "book_id=snake",
        {"title": "Snake", "genre": 2},
        200,
        {"name": "shelves/2/books/snake", "genre": "SCIENCE"},
    ),
    (
        "PUT",
        "/v1/shelves/2/books:create",
        "",
        {"bookId": "star", "book": {"title": "Star"}},
        200,
        {"name": "shelves/2/books/star", "title": "Star"},
    ),
    ("POST", "/v1/shelves/1/books", "bookId=dune", {"title": "Again"}, 409, {"code": 6}),
    ("POST", "/v1/shelves/2/books", "bookId=typo", {"titel": "x"}, 400, {"code": 3}),
    ("POST", "/v1/shelves/2/books", "bookId=typo&book.title=x", {}, 400, {"code": 3}),
    (
        "PATCH",
        "/v1/shelves/1/books/edit-me",
        "updateMask=title",
        {"title": "Final", "pages": 99},
        200,
        {"name": "shelves/1/books/edit-me", "title": "Final", "pages": "10"},
    ),
    ("PATCH", "/v1/shelves/1/books/missing", "", {"title": "x"}, 404, {"code": 5}),
    (
        "POST",
        "/v1/shelves/2:archive",
        "",
        {"reason": "full"},
        200,
        {"name": "shelves/2", "archived": True, "reason": "full"},
    ),
    ("POST", "/v1/shelves/4:archive", "", {}, 400, {"code": 9}),
    pytest.param(
        "GET",
        "/v1/shelves/3/books",
        "",
        None,
        200,
        [{"name": "shelves/3/books/a", "pages": "9007199254740993"}, {"name": "shelves/3/books/b"}],
    ),
    pytest.param(
        "GET",
        "/v1/shelves/3/books",
        "pageSize=1",
        None,
        200,
        [{"title": "Alpha"}],
    ),
    pytest.param("GET", "/v1/shelves/empty/books", "", None, 200, []),
    ("DELETE", "/v1/shelves/1/books/doomed", "", None, 200, {}),
    ("DELETE", "/v1/shelves/1/books/never", "", None, 404, {"code": 5}),
    ("POST", "/v1/shelves/1/books/dune", "", {}, 405, {"code": 12}),
    ("GET", "/v1/shelves/1", "", None, 404, {"code": 5}),
    ("GET", "/v1/sleep/0.01s", "", None, 200, {}),
    ("GET", "/v1/sleep/soon", "", None, 400, {"code": 3}),
]
RULE_IDS = [
    "get-template",
    "additional-binding",
    "int64-string-enum-name",
    "timestamp-out",
    "get-not-found",
    "percent-decoded-variable",
    "double-star",
    "double-star-zero-segments",
    "double-star-keeps-%2F",
    "post-body-field-query-camel",
    "post-body-field-query-snake-enum-number",
    "additional-binding-body-star",
    "create-already-exists",
    "unknown-body-field",
    "query-names-body-field",
    "patch-nested-variable-field-mask",
    "patch-not-found",
    "custom-verb-body-star",
    "custom-verb-failed-precondition",
    "response-body-list",
    "response-body-page-size",
    "response-body-empty-list",
    "delete-returns-empty",
    "delete-not-found",
    "wrong-method-405",
    "unknown-path-404",
    "duration-path-variable",
    "bad-duration-path-variable",
]


@pytest.mark.parametrize(("method", "path", "query", "body", "status", "fragment"), RULE_FORMS, ids=RULE_IDS)
def test_rule_forms(
    edge: Edge, method: str, path: str, query: str, body: object, status: int, fragment: Any
) -> None:
    answer = edge.call(method, f"{path}?{query}" if query else path, body)
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"].startswith("application/json")
    _contains(answer.json(), fragment)
    if status >= 400:
        assert set(answer.json()) == {"code", "message", "details"}, answer.body


def test_custom_head_rule(edge: Edge) -> None:
    assert edge.call("HEAD", "/v1/shelves/1/books/dune").status == 200
    assert edge.call("HEAD", "/v1/shelves/1/books/nope").status == 404
    wrong = edge.call("PUT", "/v1/shelves/1/books/dune", {})
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "DELETE, GET, HEAD, PATCH"


QUERY_MAPPING: list[tuple[str, int, Any]] = [
    ("filter.genre=SCIENCE", 200, {"filter": {"genre": "SCIENCE"}}),
    ("filter.pages.min=10&filter.pages.max=20", 200, {"filter": {"pages": {"min": 10, "max": 20}}}),
    ("filter.genre=2", 200, {"filter": {"genre": "SCIENCE"}}),
    ("tags=a&tags=b&tags=c", 200, {"tags": ["a", "b", "c"]}),
    ("genres=FICTION&genres=2", 200, {"genres": ["FICTION", "SCIENCE"]}),
    ("cursor=%2B%2F8%3D", 200, {"cursor": "+/8="}),
    ("cursor=-_8", 200, {"cursor": "+/8="}),
    ("after=2024-01-02T03:04:05.5%2B01:00", 200, {"after": "2024-01-02T02:04:05.500Z"}),
    ("maxAge=1.5s", 200, {"maxAge": "1.500s"}),
    ("max_age=90s", 200, {"maxAge": "90s"}),
    ("readMask=title,publishedAt", 200, {"readMask": "title,publishedAt"}),
    ("minPages=100&available=true&author=Ann", 200, {"minPages": 100, "available": True, "author": "Ann"}),
    ("available=false", 200, {"available": False}),
    ("limit=9007199254740993&score=0.25", 200, {"limit": "9007199254740993", "score": 0.25}),
    ("_=123", 200, {"tags": []}),
    ("colour=red", 400, {"code": 3}),
    ("parent=shelves/2", 400, {"code": 3}),
    ("filter.genre=POETRY", 400, {"code": 3}),
    ("genres=7", 400, {"code": 3}),
    ("limit=x", 400, {"code": 3}),
    ("after=yesterday", 400, {"code": 3}),
    ("minPages=1&minPages=2", 400, {"code": 3}),
]


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    QUERY_MAPPING,
    ids=[
        "nested-enum-name",
        "nested-two-levels",
        "nested-enum-number",
        "repeated-keys",
        "repeated-enum-name-and-number",
        "bytes-std-base64",
        "bytes-url-safe-base64",
        "timestamp-offset",
        "duration-camel",
        "duration-snake",
        "field-mask",
        "wrappers",
        "wrapper-false-and-unset-null",
        "int64-and-double",
        "ignored-cache-buster",
        "unknown-parameter",
        "path-bound-field",
        "bad-enum-name",
        "bad-enum-number",
        "bad-int64",
        "bad-timestamp",
        "repeated-singular-wrapper",
    ],
)
def test_query_mapping(edge: Edge, query: str, status: int, fragment: Any) -> None:
    answer = edge.call("GET", f"/v1/shelves/1/books:search?{query}")
    assert answer.status == status, answer.body
    body = answer.json()
    _contains(body, fragment)
    if status == 200:
        assert body["parent"] == "shelves/1"
    else:
        violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
        name = query.split("=", 1)[0]
        assert any(v["field"] == name for v in violations), violations


_PUBLISHED = "2020-01-01T00:00:00Z"
PATCHES = [
    ("", {"title": "Renamed"}, ["title"], {"title": "Renamed", "pages": "10"}),
    ("", {"pages": 0}, ["pages"], {"title": "Draft", "pages": "0"}),
    ("", {"size": {"max": 3}}, ["size.max"], {"size": {"min": 1, "max": 3}}),
    ("", {"size": {}}, ["size"], {"size": {"min": 0, "max": 0}}),
    (
        "",
        {"tags": ["a"], "labels": {"k": "v"}, "publishedAt": "2021-01-01T00:00:00Z", "genre": "SCIENCE"},
        ["genre", "labels", "published_at", "tags"],
        {"tags": ["a"], "labels": {"k": "v"}, "genre": "SCIENCE", "title": "Draft"},
    ),
    ("", {"published_at": None}, ["published_at"], {"publishedAt": None}),
    ("updateMask=title", {"title": "Mine", "pages": 5}, ["title"], {"title": "Mine", "pages": "10"}),
    ("", {}, [], {"title": "Draft"}),
]


@pytest.mark.parametrize(
    ("query", "body", "mask", "fragment"),
    PATCHES,
    ids=[
        "one-field",
        "a-zero-value-is-written",
        "nested-message-dotted",
        "empty-object-is-a-path",
        "lists-maps-and-times-are-leaves",
        "null-clears",
        "explicit-mask-wins",
        "empty-body-no-mask",
    ],
)
def test_patch_without_update_mask_derives_it_from_the_body(
    edge: Edge, query: str, body: dict[str, Any], mask: list[str], fragment: Any
) -> None:
    """grpc-gateway v2's PATCH feature: the keys the client sent are the fields it updates,
    so what it left out is kept, and a zero or null it sent is written."""
    name = f"shelves/2/books/patch-{len(edge.library.masks)}-{uuid.uuid4().hex[:6]}"
    original = {
        "title": "Draft",
        "pages": 10,
        "size": {"min": 1, "max": 2},
        "publishedAt": "2020-01-01T00:00:00Z",
    }
    created = edge.call("POST", f"/v1/shelves/2/books?bookId={name.rsplit('/', 1)[1]}", original)
    assert created.status == 200, created.body
    answer = edge.call("PATCH", f"/v1/{name}?{query}" if query else f"/v1/{name}", body)
    assert answer.status == 200, answer.body
    assert edge.library.masks[name] == mask
    _contains(answer.json(), fragment)


BASE64 = [
    ("POST", "/v1/shelves/2/books?bookId=covered", {"cover": "aGk_Pz4-"}, 200, "book.cover"),
    ("GET", "/v1/chunks/aGk%2FPz4%2B", None, 200, "id"),
    ("GET", "/v1/chunks/aGk", None, 200, "id"),
    ("GET", "/v1/shelves/1/books:search?cursor=aGk", None, 200, "cursor"),
    ("POST", "/v1/shelves/2/books?bookId=bad1", {"cover": "a$b="}, 400, "book.cover"),
    ("POST", "/v1/shelves/2/books?bookId=bad2", {"cover": "aGk=="}, 400, "book.cover"),
    ("PUT", "/v1/shelves/2/books:create", {"bookId": "bad3", "book": {"cover": "a+b_"}}, 400, "book.cover"),
    ("GET", "/v1/chunks/a%24b%3D", None, 400, "id"),
    ("GET", "/v1/chunks/aGk%3D%3D", None, 400, "id"),
    ("GET", "/v1/shelves/1/books:search?cursor=aG%3Dk", None, 400, "cursor"),
    ("GET", "/v1/shelves/1/books:search?cursor=a%2Bb_", None, 400, "cursor"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    BASE64,
    ids=[
        "body-url-safe",
        "path-standard",
        "path-unpadded",
        "query-unpadded",
        "body-stray-character",
        "body-bad-padding",
        "body-mixed-alphabets",
        "path-stray-character",
        "path-bad-padding",
        "query-padding-inside",
        "query-mixed-alphabets",
    ],
)
def test_bytes_fields_take_valid_base64_only(
    edge: Edge, method: str, path: str, body: object, status: int, field: str
) -> None:
    """Standard or URL-safe, padded or not, in bodies, path variables and queries; anything
    else is a 400 naming the field, never bytes other than the client sent."""
    answer = edge.call(method, path, body)
    assert answer.status == status, answer.body
    if status == 200:
        found = answer.json()
        for part in field.split(".")[1:] if field.startswith("book.") else [field]:
            found = found[part]
        assert base64.b64decode(found) == (b"hi??>>" if "Pz4" in path or body else b"hi")
    else:
        violations = next(d for d in answer.json()["details"] if d["@type"].endswith("BadRequest"))
        assert [v["field"] for v in violations["fieldViolations"]] == [field]
        assert "base64" in violations["fieldViolations"][0]["description"]


ERROR_CODES = [
    ("CANCELLED", 499),
    ("UNKNOWN", 500),
    ("INVALID_ARGUMENT", 400),
    ("DEADLINE_EXCEEDED", 504),
    ("NOT_FOUND", 404),
    ("ALREADY_EXISTS", 409),
    ("PERMISSION_DENIED", 403),
    ("RESOURCE_EXHAUSTED", 429),
    ("FAILED_PRECONDITION", 400),
    ("ABORTED", 409),
    ("OUT_OF_RANGE", 400),
    ("UNIMPLEMENTED", 501),
    ("INTERNAL", 500),
    ("UNAVAILABLE", 503),
    ("DATA_LOSS", 500),
    ("UNAUTHENTICATED", 401),
]


@pytest.mark.parametrize(("code", "status"), ERROR_CODES, ids=[c for c, _ in ERROR_CODES])
def test_backend_errors_map_to_http_statuses(edge: Edge, code: str, status: int) -> None:
    answer = edge.call("GET", f"/v1/errors/{code}")
    assert answer.status == status, answer.body
    body = answer.json()
    assert body == {"code": code_pb2.Code.Value(code), "message": f"failing with {code}", "details": []}
    assert answer.headers["X-Request-Id"]
    if code == "UNAUTHENTICATED":
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_rich_error_details_are_passed_through(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/errors/PERMISSION_DENIED?rich=true")
    assert answer.status == 403, answer.body
    body = answer.json()
    assert body["code"] == 7 and body["message"] == "the shelf is locked"
    kinds = {d["@type"]: d for d in body["details"]}
    info = kinds["type.googleapis.com/google.rpc.ErrorInfo"]
    assert info["reason"] == "SHELF_LOCKED" and info["domain"] == "library.acme.example"
    bad = kinds["type.googleapis.com/google.rpc.BadRequest"]
    _contains(bad["fieldViolations"], [{"field": "shelf", "description": "locked"}])


def test_headers_both_ways(edge: Edge) -> None:
    answer = edge.call(
        "POST",
        "/v1/echo",
        {"text": "hi"},
        headers={
            "Authorization": "Bearer abc",
            "Grpc-Metadata-Tenant": "acme",
            "Grpc-Metadata-Token-Bin": base64.b64encode(b"\x00\x01").decode(),
            "X-Request-Id": "req-42",
            "X-Forwarded-For": "203.0.113.9",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "Cookie": "secret=1",
        },
    )
    assert answer.status == 200, answer.body
    seen = answer.json()["metadata"]
    assert seen == edge.library.seen[-1]
    assert seen["authorization"] == "Bearer abc"
    assert seen["tenant"] == "acme"
    assert seen["token-bin"] == base64.b64encode(b"\x00\x01").decode()
    assert seen["x-request-id"] == "req-42"
    assert seen["x-forwarded-for"] == "127.0.0.1", "no trusted proxy: the client's own list is dropped"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{edge.port}"
    assert seen["traceparent"].startswith("00-0af7")
    assert "cookie" not in seen
    assert answer.headers["Grpc-Metadata-X-Served-By"] == "library"
    assert answer.headers["Grpc-Metadata-X-Blob-Bin"] == base64.b64encode(b"\x01\x02\xff").decode()
    assert answer.headers["Grpc-Trailer-X-Cost"] == "3"
    assert answer.headers["X-Request-Id"] == "req-42"


def test_trailers_are_sent_as_http_trailers_to_a_client_that_accepts_them(edge: Edge) -> None:
    echoed, failed, empty = http_calls_with_trailers(
        edge.port,
        [
            ("POST", "/v1/echo", json.dumps({"text": "hi"}).encode()),
            ("GET", "/v1/errors/FAILED_PRECONDITION", b""),
            ("GET", "/v1/shelves/1/books:search", b""),  # a method that sets no trailing metadata
        ],
        headers={"TE": "trailers"},
    )
    assert echoed.status == 200 and json.loads(echoed.body)["text"] == "hi"
    assert echoed.header("Transfer-Encoding") == "chunked" and echoed.header("Content-Length") is None
    assert echoed.header("Trailer") == "Grpc-Trailer-x-cost"
    assert echoed.trailers == [("grpc-trailer-x-cost", "3")]
    assert echoed.header("Grpc-Metadata-x-served-by") == "library", "header metadata stays in the headers"
    assert echoed.header("Grpc-Trailer-x-cost") is None, "sent once, as a trailer"
    assert failed.status == 400 and json.loads(failed.body)["message"] == "failing with FAILED_PRECONDITION"
    assert failed.header("Grpc-Metadata-x-served-by") == "library"
    assert failed.trailers == [("grpc-trailer-x-cost", "1"), ("grpc-trailer-x-trace-bin", "AP8=")]
    assert not any(name.startswith("grpc-trailer-grpc-") for name, _ in failed.trailers), "no grpc-* keys"
    assert empty.status == 200 and empty.trailers == [] and empty.header("Trailer") is None


def test_without_te_trailers_the_trailers_are_headers(edge: Edge) -> None:
    failed = edge.call("GET", "/v1/errors/NOT_FOUND")
    assert failed.status == 404
    assert failed.headers["Grpc-Trailer-X-Cost"] == "1" and failed.headers["Content-Length"]
    old = http_call(edge.port, "POST", "/v1/echo", {"text": "hi"}, headers={"TE": "trailers"}, http10=True)
    assert old.status == 200 and old.headers["Grpc-Trailer-X-Cost"] == "3", "HTTP/1.0 has no chunks to end"


def test_grpc_timeout_on_a_slow_method_is_504(edge: Edge) -> None:
    started = time.monotonic()
    answer = edge.call("GET", "/v1/sleep/5s", headers={"Grpc-Timeout": "200m"})
    assert answer.status == 504, answer.body
    assert answer.json()["code"] == 4
    assert time.monotonic() - started < 3


def test_a_client_that_disconnects_cancels_the_backend_call(edge: Edge) -> None:
    edge.library.sleeping.clear()
    edge.library.abandoned.clear()
    with socket.create_connection(("127.0.0.1", edge.port), timeout=10) as client:
        client.sendall(b"GET /v1/sleep/20s HTTP/1.1\r\nHost: edge\r\n\r\n")
        assert edge.library.sleeping.wait(10), "the call reached the backend"
    assert edge.library.abandoned.wait(10), "the backend saw the call cancelled once the client left"


def _events(answer: Answer) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    for block in answer.body.decode().split("\n\n"):
        if not block.strip():
            continue
        kind, data = "", []
        for line in block.splitlines():
            if line.startswith("event:"):
                kind = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].strip())
        events.append((kind, json.loads("\n".join(data))))
    return events


def test_stream_as_ndjson(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/1:watch?count=3")
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("application/x-ndjson")
    assert answer.headers["Grpc-Metadata-X-Watch"] == "on"
    lines = [json.loads(line) for line in answer.body.splitlines()]
    assert [line["result"]["sequence"] for line in lines] == [1, 2, 3]
    assert lines[0]["result"]["book"]["name"] == "shelves/1/books/1"


def test_stream_with_response_body(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/7/books:watch?count=2")
    assert answer.status == 200, answer.body
    lines = [json.loads(line) for line in answer.body.splitlines()]
    assert [line["result"]["name"] for line in lines] == ["shelves/7/books/1", "shelves/7/books/2"]
    assert lines[0]["result"]["pages"] == "0", "unpopulated fields are emitted"


def test_stream_as_sse(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/1:watch?count=2", headers={"Accept": "text/event-stream"})
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    assert [(kind, data["sequence"]) for kind, data in _events(answer)] == [("", 1), ("", 2)]


def test_a_stream_failing_midway_ends_with_an_error_line(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/1:watch?count=5&failAfter=2")
    assert answer.status == 200, answer.body
    lines = [json.loads(line) for line in answer.body.splitlines()]
    assert [line["result"]["sequence"] for line in lines[:-1]] == [1, 2]
    assert lines[-1] == {"error": {"code": 10, "message": "the shelf moved", "details": []}}
    sse = edge.call("GET", "/v1/shelves/1:watch?count=5&failAfter=1", headers={"Accept": "text/event-stream"})
    events = _events(sse)
    assert events[0][0] == "" and events[0][1]["sequence"] == 1
    assert events[-1] == ("error", {"code": 10, "message": "the shelf moved", "details": []})


def test_a_stream_refused_at_once_gets_its_own_status(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/nowhere:watch?count=0&failAfter=-1")
    assert answer.status == 404, answer.body
    assert answer.json()["code"] == 5


def test_openapi_describes_the_foreign_service(edge: Edge) -> None:
    paths = edge.call("GET", "/openapi.json").json()["paths"]
    assert {p: sorted(v) for p, v in paths.items()} == {
        "/v1/shelves/{shelve}/books/{book}": ["delete", "get", "head", "patch"],
        "/v2/library/shelves/{shelve}/books/{book}": ["get"],
        "/v1/files/{file}": ["get"],
        "/v1/shelves/{shelve}/books": ["get", "post"],
        "/v1/shelves/{shelve}/books:create": ["put"],
        "/v1/shelves/{shelve}:archive": ["post"],
        "/v1/shelves/{shelve}/books:search": ["get"],
        "/v1/echo": ["post"],
        "/v1/errors/{code}": ["get"],
        "/v1/sleep/{delay}": ["get"],
        "/v1/chunks/{id}": ["get"],
        "/v1/shelves/{shelve}/books/{book}:uploadCover": ["post"],
        "/v1/shelves/{shelve}/books/{book}:echoCover": ["post"],
        "/v1/shelves/{shelve}:export": ["get"],
        "/v1/readingRoom:enter": ["post"],
        "/v1/shelves/{shelve}/books:browse": ["get"],
        "/v1/shelves/{shelve}:watch": ["get"],
        "/v1/shelves/{shelve}/books:watch": ["get"],
    }
    listed = paths["/v1/shelves/{shelve}/books"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/acme.library.v1.Book"},
    }
    watched = paths["/v1/shelves/{shelve}:watch"]["get"]["responses"]["200"]["content"]
    assert set(watched) == {"application/x-ndjson", "text/event-stream"}


def _exposed(answer: Answer) -> set[str]:
    value = answer.headers.get("Access-Control-Expose-Headers", "")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"], ids=["ndjson", "sse"])
def test_a_browser_on_an_allowed_origin_can_read_a_stream(edge: Edge, accept: str) -> None:
    answer = edge.call("GET", "/v1/shelves/1:watch?count=2", headers={"Origin": SHOP, "Accept": accept})
    assert answer.status == 200, answer.body
    assert answer.headers["Access-Control-Allow-Origin"] == SHOP, "a stream's head carries CORS too"
    assert "Origin" in answer.headers.get_all("Vary", [])
    assert {"x-request-id", "grpc-metadata-x-watch"} <= _exposed(answer)


def test_expose_headers_names_the_answers_own_headers_never_a_pattern(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/1:watch?count=1", headers={"Origin": SHOP})
    unary = edge.call("GET", "/v1/shelves/1/books/dune", headers={"Origin": SHOP})
    for exposed in (_exposed(answer), _exposed(unary)):
        assert "x-request-id" in exposed
        assert not any("*" in name for name in exposed), exposed
        assert "content-type" not in exposed, "safelisted headers need no exposing"


def test_a_stream_for_another_origin_carries_no_cors_headers(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/1:watch?count=1", headers={"Origin": "https://evil.example"})
    assert answer.status == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Access-Control-Expose-Headers" not in answer.headers


@pytest.mark.parametrize(
    ("method", "content_type", "status"),
    [
        ("POST", "text/plain", 415),
        ("POST", "application/x-www-form-urlencoded", 415),
        ("POST", "multipart/form-data; boundary=x", 415),
        ("POST", "", 415),
        ("POST", "application/json; charset=latin-1", 415),
        ("PATCH", "text/plain;charset=UTF-8", 415),
        ("POST", "application/json", 409),
        ("POST", "Application/JSON; charset=UTF-8", 409),
        ("POST", "application/vnd.acme+json", 409),
    ],
    ids=["text", "form", "multipart", "no-type", "latin-1", "patch-text", "json", "json-cased", "plus-json"],
)
def test_a_body_must_be_sent_as_json(edge: Edge, method: str, content_type: str, status: int) -> None:
    # A POST of an existing book is 409 once its body is read; a PATCH of a missing one 404.
    path = "/v1/shelves/1/books?bookId=dune" if method == "POST" else "/v1/shelves/1/books/missing"
    raw = json.dumps({"title": "Again"}).encode()
    if not content_type:  # the test client would add one
        answer = _without_type(edge.port, method, path, raw)
    else:
        answer = http_call(edge.port, method, path, raw=raw, headers={"Content-Type": content_type})
    assert answer.status == status, answer.body
    if status == 415:
        body = answer.json()
        assert body["code"] == 3 and body["details"][0]["reason"] == "UNSUPPORTED_MEDIA_TYPE"
        accept = "Accept-Patch" if method == "PATCH" else "Accept-Post"
        assert answer.headers[accept] == "application/json"


def _without_type(port: int, method: str, path: str, body: bytes) -> Answer:
    data = f"{method} {path} HTTP/1.1\r\nHost: e\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(port, data.encode() + body)
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    fields = http.client.parse_headers(io.BytesIO(head.partition(b"\r\n")[2] + b"\r\n\r\n"))
    return Answer(status, fields, rest)


def test_a_call_without_a_body_needs_no_type(edge: Edge) -> None:
    answer = _without_type(edge.port, "POST", "/v1/shelves/4:archive", b"")
    assert answer.status != 415, answer.body


def test_head_answers_every_get_route_without_the_body(edge: Edge) -> None:
    got = edge.call("GET", "/v1/shelves/1/books")
    head = edge.call("HEAD", "/v1/shelves/1/books")
    assert (got.status, head.status) == (200, 200)
    assert head.body == b"" and int(head.headers["Content-Length"]) == len(got.body)
    assert head.headers["Content-Type"] == got.headers["Content-Type"]
    missing = edge.call("HEAD", "/v1/errors/NOT_FOUND")
    assert missing.status == 404 and missing.body == b""


def test_head_on_a_stream_is_its_head_alone(edge: Edge) -> None:
    started = time.monotonic()
    head = edge.call("HEAD", "/v1/shelves/1:watch?count=1000000")
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Type"].startswith("application/x-ndjson")
    assert time.monotonic() - started < 5, "the stream is not played out for a HEAD"


def test_head_is_allowed_wherever_get_is(edge: Edge) -> None:
    wrong = edge.call("DELETE", "/v1/shelves/1/books")
    assert wrong.status == 405
    assert set(wrong.headers["Allow"].split(", ")) >= {"GET", "HEAD"}


def test_the_document_is_gzipped_for_a_client_that_accepts_it(edge: Edge) -> None:
    plain = edge.call("GET", "/openapi.json")
    zipped = edge.call("GET", "/openapi.json", headers={"Accept-Encoding": "gzip"})
    assert plain.headers.get("Content-Encoding") is None
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"] and "Accept-Encoding" in plain.headers["Vary"]
    assert json.loads(gzip.decompress(zipped.body)) == plain.json()
    assert len(zipped.body) * 4 < len(plain.body)
    brotlied = edge.call("GET", "/openapi.json", headers={"Accept-Encoding": "gzip, br"})
    assert brotlied.headers["Content-Encoding"] == "br"
    assert json.loads(brotli.decompress(brotlied.body)) == plain.json()
    written = edge.call(
        "POST", "/v1/shelves/1/books?bookId=dune", {"title": "x"}, headers={"Accept-Encoding": "gzip"}
    )
    assert written.headers.get("Content-Encoding") is None, "answers to writes are never compressed"


# -- HTTP/2 and HTTPS at the edge ---------------------------------------------------------------


def test_a_call_over_http2_gets_what_http11_gets(edge: Edge) -> None:
    over_h1 = edge.call("GET", "/v1/shelves/1/books/dune", headers={"Origin": SHOP})
    over_h2 = h2_call(edge.port, "GET", "/v1/shelves/1/books/dune", headers=[("origin", SHOP)])
    assert over_h2.status == over_h1.status == 200
    assert json.loads(over_h2.body) == over_h1.json()
    assert over_h2.header("access-control-allow-origin") == SHOP
    assert over_h2.header("x-request-id")
    missing = h2_call(edge.port, "GET", "/v1/shelves/1/books/nope")
    assert missing.status == 404 and json.loads(missing.body)["code"] == 5


def test_calls_multiplexed_on_one_http2_connection_each_get_their_own_answer(edge: Edge) -> None:
    with H2Client(edge.port) as client:
        streams = {
            client.request(
                "POST",
                "/v1/echo",
                headers=[("content-type", "application/json")],
                body=json.dumps({"text": f"call {i}"}).encode(),
            ): f"call {i}"
            for i in range(16)
        }
        watch = client.request(
            "GET", "/v1/shelves/1:watch?count=3", headers=[("accept", "text/event-stream")]
        )
        client.read(until=[*streams, watch])
    for stream, text in streams.items():
        answer = client.answers[stream]
        assert answer.status == 200 and json.loads(answer.body)["text"] == text
    events = [line for line in client.answers[watch].body.decode().split("\n") if line.startswith("data:")]
    assert len(events) == 3, client.answers[watch].body


def test_trailers_and_gzip_over_http2(edge: Edge) -> None:
    echoed = h2_call(
        edge.port,
        "POST",
        "/v1/echo",
        headers=[("content-type", "application/json"), ("te", "trailers")],
        body=b'{"text": "hi"}',
    )
    assert echoed.status == 200 and echoed.trailers == [("grpc-trailer-x-cost", "3")]
    assert echoed.header("grpc-metadata-x-served-by") == "library", "header metadata stays in the headers"
    document = h2_call(edge.port, "GET", "/openapi.json", headers=[("accept-encoding", "gzip")])
    assert document.header("content-encoding") == "gzip" and json.loads(gzip.decompress(document.body))


def test_curl_upgrades_to_http2_at_the_edge(edge: Edge) -> None:
    answer = curl("--http2", "-i", f"http://127.0.0.1:{edge.port}/v1/shelves/1/books/dune")
    assert answer.stdout.startswith("HTTP/1.1 101"), answer.stderr
    assert "HTTP/2 200" in answer.stdout and '"title":"Dune"' in answer.stdout.replace(" ", "")


def _serving_certificate(edge: Edge, directory: Path) -> tuple[Path, Path, Path]:
    """A certificate for localhost from the test CA, written for ``--tls-cert``/``--tls-key``."""
    authority = tls.load_authority(edge.certs)
    certificate, key = authority.issue("edge", dns=["localhost"])
    cert_file, key_file = directory / "edge.crt", directory / "edge.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file, edge.certs / "ca.crt"


def test_the_edge_terminates_tls_with_http2_by_alpn(edge: Edge, tmp_path: Path) -> None:
    cert_file, key_file, ca = _serving_certificate(edge, tmp_path)
    port = free_port()
    process = Process.module(
        "gateway",
        STANDALONE,
        *edge.source,
        f"--backend=acme.library.v1.LibraryService=localhost:{edge.backend_port}",
        f"--listen=127.0.0.1:{port}",
        f"--cacert={ca}",
        f"--cert={edge.certs / 'gateway.crt'}",
        f"--key={edge.certs / 'gateway.key'}",
        f"--tls-cert={cert_file}",
        f"--tls-key={key_file}",
    )
    try:
        process.wait_for_line(lambda line: '"serving"' in line and '"https"' in line, timeout=30)
        url = f"https://localhost:{port}/v1/shelves/1/books/dune"
        over_h2 = curl("--http2", "--cacert", str(ca), "-i", url)
        over_h1 = curl("--http1.1", "--cacert", str(ca), "-i", url)
        plain = curl("-i", f"http://127.0.0.1:{port}/v1/shelves/1/books/dune")
    finally:
        process.stop()
    assert over_h2.stdout.startswith("HTTP/2 200"), over_h2.stderr
    assert over_h1.stdout.startswith("HTTP/1.1 200"), over_h1.stderr
    assert '"title":"Dune"' in over_h2.stdout.replace(" ", "")
    assert not plain.stdout.startswith("HTTP/1.1 200"), "plain HTTP is not served on an HTTPS port"


def test_the_edge_refuses_to_start_with_half_a_certificate(edge: Edge, tmp_path: Path) -> None:
    cert_file, _, _ = _serving_certificate(edge, tmp_path)
    command = [sys.executable, "-m", "gateway", *edge.source, "--default-backend=localhost:1,plaintext"]
    result = subprocess.run(
        [*command, f"--tls-cert={cert_file}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **STANDALONE},
        check=False,
    )
    assert result.returncode == 2 and "--tls-key" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n\x00\xff binary, not UTF-8"),
        ("application/x-www-form-urlencoded", b"a=1&b=%20two"),
        ("application/json", b'{"not": "parsed as the request"}'),
        ("text/plain; charset=utf-8", "plain text, ünïcödé".encode()),
    ],
    ids=["binary", "form", "json", "text"],
)
def test_a_body_bound_to_an_httpbody_field_arrives_as_sent(
    edge: Edge, content_type: str, data: bytes
) -> None:
    answer = http_call(
        edge.port,
        "POST",
        "/v1/shelves/1/books/dune:uploadCover?note=front",
        raw=data,
        headers={"Content-Type": content_type},
        timeout=15,
    )
    assert answer.status == 200, answer.body
    echoed = answer.json()
    assert echoed["name"] == "shelves/1/books/dune" and echoed["note"] == "front"
    assert base64.b64decode(echoed["cover"]["data"]) == data
    assert echoed["cover"]["contentType"] == content_type


def test_an_httpbody_past_the_body_limit_is_413(edge: Edge) -> None:
    answer = http_call(
        edge.port,
        "POST",
        "/v1/shelves/1/books/dune:uploadCover",
        raw=b"x" * (2 * 1024 * 1024),
        headers={"Content-Type": "application/octet-stream"},
        timeout=15,
    )
    assert answer.status == 413


@pytest.mark.parametrize(
    ("content_type", "data"),
    [("image/png", b"\x89PNG\r\n\x1a\n\x00"), ("text/html; charset=utf-8", "<p>ünï</p>".encode())],
    ids=["image", "html"],
)
def test_an_httpbody_reply_is_sent_as_its_bytes_with_its_type(
    edge: Edge, content_type: str, data: bytes
) -> None:
    answer = http_call(
        edge.port,
        "POST",
        "/v1/shelves/1/books/dune:echoCover",
        raw=data,
        headers={"Content-Type": content_type},
        timeout=15,
    )
    assert (answer.status, answer.body) == (200, data)
    assert answer.headers["Content-Type"] == content_type
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_an_httpbody_field_named_by_response_body_is_the_answer(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/7:export")
    assert (answer.status, answer.body) == (200, b"shelf,title\nshelves/7,Dune\n")
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"


@pytest.mark.parametrize("claimed", ["text/html%0D%0ASet-Cookie:%20a=b", ""], ids=["line-break", "none"])
def test_an_httpbody_type_that_cannot_be_a_header_is_sent_as_octet_stream(edge: Edge, claimed: str) -> None:
    answer = http_call(
        edge.port,
        "POST",
        f"/v1/shelves/1/books/dune:echoCover?note={claimed}",
        raw=b"<script>x</script>",
        headers={"Content-Type": "" if not claimed else "text/plain"},
        timeout=15,
    )
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/octet-stream"
    assert "Set-Cookie" not in answer.headers


def test_a_method_may_ask_for_unknown_query_parameters_to_be_ignored(edge: Edge) -> None:
    answer = edge.call("GET", "/v1/shelves/1/books:browse?utm_source=mail&limit=3&access_type=offline")
    assert (answer.status, answer.json()["limit"]) == (200, "3"), answer.body
    refused = edge.call("GET", "/v1/shelves/1/books:browse?limit=many&utm_source=mail")
    assert refused.status == 400
    violations = [v["field"] for d in refused.json()["details"] for v in d.get("fieldViolations", [])]
    assert violations == ["limit"]
    assert edge.call("GET", "/v1/shelves/1/books:search?utm_source=mail").status == 400, "elsewhere: refused"


def test_declared_metadata_comes_back_as_headers_and_status(edge: Edge) -> None:
    answer = edge.call("POST", "/v1/readingRoom:enter", {"ticket": "valid", "next": "/v1/shelves/1"})
    assert answer.status == 303, answer.body
    assert answer.headers["Location"] == "/v1/shelves/1"
    assert answer.headers["Set-Cookie"] == "room=reader-1; Secure; HttpOnly; SameSite=Lax"
    assert answer.headers["Grpc-Metadata-X-Note"] == "undeclared", "undeclared metadata keeps its prefix"
    assert answer.headers["Grpc-Metadata-X-Request-Id"] == "spoofed"
    assert answer.headers.get_all("X-Request-Id") == [answer.headers["X-Request-Id"]] != ["spoofed"]
    assert "Grpc-Metadata-Location" not in answer.headers and "X-Http-Code" not in answer.headers
    assert answer.headers["Content-Security-Policy"] == "sandbox", "bytes a user may have made run no script"


def test_a_failed_method_sends_no_cookie_nor_redirect_it_declared(edge: Edge) -> None:
    """It set them, then failed: neither reaches the browser, not even as Grpc-Metadata-*,
    which a script on an allowed origin could read."""
    answer = edge.call("POST", "/v1/readingRoom:enter", {"ticket": "valid", "next": "/x", "code": "fail"})
    assert answer.status == 403
    leaked = [name for name in answer.headers if "cookie" in name.lower() or "location" in name.lower()]
    assert leaked == []
    assert answer.json()["code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]


def test_two_different_statuses_chosen_by_one_method_are_its_error(edge: Edge) -> None:
    answer = edge.call("POST", "/v1/readingRoom:enter", {"ticket": "valid", "next": "/x", "code": "401"})
    assert answer.status == 500
    assert answer.json()["details"][0]["reason"] == "CONFLICTING_STATUS"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("", 401),
        ("422", 422),
        ("204", 200),
        ("205", 200),
        ("101", 200),
        ("407", 200),
        ("999", 200),
        ("abc", 200),
    ],
)
def test_a_method_picks_its_status_from_200_to_599_but_none_without_a_body(
    edge: Edge, code: str, status: int
) -> None:
    answer = edge.call("POST", "/v1/readingRoom:enter", {"ticket": "forged", "code": code})
    assert answer.status == status
    assert answer.body == b"<p>That ticket is not valid.</p>"
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"


def test_openapi_takes_any_media_type_for_an_httpbody(edge: Edge) -> None:
    document = edge.call("GET", "/openapi.json").json()
    operation = document["paths"]["/v1/shelves/{shelve}/books/{book}:uploadCover"]["post"]
    assert operation["requestBody"]["content"] == {"*/*": {"schema": {}}}
    assert "415" not in operation["responses"]
    for path, method in (
        ("/v1/shelves/{shelve}/books/{book}:echoCover", "post"),
        ("/v1/shelves/{shelve}:export", "get"),
    ):
        answered = document["paths"][path][method]["responses"]["200"]
        assert answered["content"] == {"*/*": {"schema": {}}}, path
    entered = document["paths"]["/v1/readingRoom:enter"]["post"]["responses"]["200"]
    assert set(entered["headers"]) == {"location", "set-cookie"}
