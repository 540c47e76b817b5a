"""`poly up`: run every service as its own process and keep them running.

Creates certificates on first run, starts ``python -m services.<name>`` per service (each
creates and migrates its own database), prefixes every log line with the component's name,
waits until each health check says SERVING, prints a ready line per component and
example calls, restarts a crashed process with exponential backoff, and on Ctrl-C or
SIGTERM drains every service (SIGTERM), killing only what outlives the grace period.
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from services.cli.probe import health_status
from services.kit import config, tls

__all__ = ["Supervisor", "example_calls"]

_PR_SET_PDEATHSIG = 1
_BACKOFF_FIRST, _BACKOFF_MAX, _HEALTHY_RESET = 1.0, 30.0, 30.0
_SKIPPED_FIELDS = {"time", "level", "service", "logger", "message", "traceback"}


def _die_with_parent() -> None:
    # If the supervisor itself is killed, its children get SIGTERM instead of living on.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _readable(line: str) -> str:
    """A JSON log line as ``12:00:01 info  message key=value``; other lines unchanged."""
    try:
        record: dict[str, Any] = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or "message" not in record:
        return line
    clock = str(record.get("time", ""))[11:19]
    fields = " ".join(f"{k}={v}" for k, v in record.items() if k not in _SKIPPED_FIELDS)
    text = f"{clock} {record.get('level', ''):<5} {record['message']}" + (f"  {fields}" if fields else "")
    if "traceback" in record:
        text += "\n" + "\n".join("    " + t for t in str(record["traceback"]).splitlines())
    return text


def example_calls(settings: config.Settings) -> list[str]:
    """Copy-paste commands that list services and call health through reflection over mTLS."""
    certs = settings.tls.ca_file.parent
    flags = f"--cacert {certs}/ca.crt --cert {certs}/cli.crt --key {certs}/cli.key"
    auth = settings.peers["auth"]
    return [
        f"npx buf curl --protocol grpc {flags} --list-services https://{auth}",
        f"npx buf curl --protocol grpc {flags} https://{auth}/grpc.health.v1.Health/Check",
        f"grpcurl -cacert {certs}/ca.crt -cert {certs}/cli.crt -key {certs}/cli.key {auth} list",
    ]


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[str] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = _BACKOFF_FIRST
    restart_at: float | None = None
    ready: bool = False


class Supervisor:
    def __init__(
        self,
        settings: config.Settings,
        *,
        components: tuple[str, ...] = config.SERVICES,
        out: IO[str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self._settings = settings
        self._children = {name: _Child(name) for name in components}
        self._out = out or sys.stdout
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._ready_timeout = ready_timeout
        self._width = max(len(name) for name in components)

    def _say(self, name: str, text: str) -> None:
        with self._write_lock:
            for line in text.splitlines() or [""]:
                self._out.write(f"{name:<{self._width}} | {line}\n")
            self._out.flush()

    def _pump(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self._say(name, _readable(line.rstrip("\n")))

    def _spawn(self, child: _Child) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{child.name}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Own session: Ctrl-C reaches only the supervisor, which then drains each child.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        child.process, child.started_at, child.ready, child.restart_at = (
            process,
            time.monotonic(),
            False,
            None,
        )
        assert process.stdout is not None
        threading.Thread(target=self._pump, args=(child.name, process.stdout), daemon=True).start()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            tls.ensure_certificates(
                self._settings.tls.ca_file.parent,
                config.COMPONENTS,
                trust_domain=self._settings.tls.trust_domain,
                namespace=self._settings.tls.namespace,
            )
            for child in self._children.values():
                self._spawn(child)
            if not self._await_ready():
                return 0 if self._stop.is_set() else 1
            self._announce()
            while not self._stop.wait(0.2):
                self._supervise()
            return 0
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _await_ready(self) -> bool:
        deadline = time.monotonic() + self._ready_timeout
        pending = set(self._children)
        while pending and not self._stop.is_set():
            for name in sorted(pending):
                child = self._children[name]
                if child.process is not None and child.process.poll() is not None:
                    self._say(
                        "poly", f"{name} exited with code {child.process.returncode} before it was ready"
                    )
                    return False
                if health_status(self._settings, name, timeout=1.0) == "SERVING":
                    child.ready = True
                    pending.discard(name)
            if time.monotonic() > deadline:
                self._say(
                    "poly", f"not healthy after {self._ready_timeout:.0f}s: {', '.join(sorted(pending))}"
                )
                return False
            self._stop.wait(0.2)
        return not pending

    def _announce(self) -> None:
        for name, child in self._children.items():
            pid = child.process.pid if child.process else "-"
            self._say(
                "poly", f"ready  {name:<{self._width}}  grpc {self._settings.peers[name]:<16} pid {pid}"
            )
        self._say("poly", "all services SERVING. Try:")
        for line in example_calls(self._settings):
            self._say("poly", "  " + line)
        self._say("poly", "Ctrl-C stops everything.")

    def _supervise(self) -> None:
        now = time.monotonic()
        for child in self._children.values():
            process = child.process
            if process is not None and process.poll() is not None and child.restart_at is None:
                if now - child.started_at > _HEALTHY_RESET:
                    child.backoff = _BACKOFF_FIRST
                child.restart_at = now + child.backoff
                self._say(
                    "poly",
                    f"{child.name} exited with code {process.returncode}; restarting in {child.backoff:.0f}s",
                )
                child.backoff = min(child.backoff * 2, _BACKOFF_MAX)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
            elif (
                process is not None
                and not child.ready
                and process.poll() is None
                and health_status(self._settings, child.name, timeout=0.5) == "SERVING"
            ):
                child.ready = True
                self._say("poly", f"ready  {child.name} again (restart {child.restarts})")

    def _shutdown(self) -> None:
        running = [c.process for c in self._children.values() if c.process and c.process.poll() is None]
        if running:
            self._say("poly", f"stopping {len(running)} services")
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.server.grace_seconds + 5
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if running:
            self._say("poly", "stopped")
