"""Run real component processes for tests: capture their output, wait on it, always clean up."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import tls
from services.kit.config import Settings
from tests.support.env import PYTHON, ROOT, process_environ


def run_module(
    module: str, environ: Mapping[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module`` to completion (at most 60 s) with a POLY_* environment."""
    return subprocess.run(
        [PYTHON, "-m", module, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=process_environ(environ),
        cwd=ROOT,
        check=False,
    )


class Process:
    """A child process whose combined output is collected line by line."""

    def __init__(self, argv: Sequence[str], environ: Mapping[str, str]) -> None:
        self.popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=process_environ(environ),
            text=True,
            bufsize=1,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def module(cls, module: str, environ: Mapping[str, str], *args: str) -> Process:
        return cls([PYTHON, "-m", module, *args], environ)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first output line matching `predicate`; fails with the output so far."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError("expected line not seen; output:\n" + self.output())
                self._changed.wait(min(remaining, 1.0))

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole process group if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(5)


def health_check(settings: Settings, address: str, *, timeout: float = 30.0, service: str = "") -> str:
    """SERVING once the server at `address` says so within `timeout`, else its last status.

    Watches health instead of polling: it waits for the server to accept connections,
    then for its status to change (a service is NOT_SERVING until its start-up is done).
    """
    last = "UNKNOWN"
    with grpc.secure_channel(address, tls.channel_credentials(settings.tls)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=True
        )
        try:
            for response in watch:
                last = str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
                if last == "SERVING":
                    break
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
        finally:
            watch.cancel()
    return last
