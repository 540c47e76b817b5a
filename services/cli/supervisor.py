"""`poly up`: run every service as its own process and keep them running.

Creates certificates on first run, refuses to start when a component's port is taken,
starts ``python -m services.<name>`` per service (each creates and migrates its own
database), says what it is waiting for until each health check says SERVING, prints a
ready line per component and example calls, restarts a crashed process with exponential
backoff, and on Ctrl-C or SIGTERM drains every service (SIGTERM), killing only what
outlives the grace period. Each failure it reports says what to do next. After the first
order is placed (a successful CreateOrder, whoever called it), it prints once the command that
shows that order's trace, when every trace lands in the span files `poly trace` reads.

Every component logs JSON, whatever POLY_LOG_FORMAT says (the supervisor reads its lines);
`services.cli.logview.Output` shows them in the chosen format: ``console``, each line in
its readable form prefixed with the component's name, or ``json``, the components' own
lines unchanged and the supervisor's as records of service ``poly``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from services.auth import keys
from services.cli import mailbox
from services.cli.logview import Output
from services.cli.probe import edge_status, health_status, port_in_use
from services.cli.system_settings import SystemSettings
from services.kit import config, tls
from services.kit.console import CALL_FINISHED
from services.kit.telemetry_settings import TelemetrySettings

__all__ = ["Supervisor", "example_calls"]

_PR_SET_PDEATHSIG = 1
_BACKOFF_FIRST, _BACKOFF_MAX, _HEALTHY_RESET = 1.0, 30.0, 30.0
_WAIT_NOTICE_FIRST, _WAIT_NOTICE_EVERY = 1.0, 15.0
_CREATE_ORDER = "/poly.orders.v1.OrdersService/CreateOrder"
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_KEEPS_EVERY_TRACE = ("always_on", "parentbased_always_on")


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child if the supervisor dies.

    libc is resolved here, in the parent: the hook runs between fork and exec, where
    loading a library could deadlock on a lock held by another thread.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _is_serving_line(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("message") == "serving"


def _placed_order_trace(line: str) -> str | None:
    """The trace id in the access line of a successful CreateOrder; None for any other line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not (
        isinstance(record, dict)
        and record.get("message") == CALL_FINISHED
        and record.get("logger") == "poly.access"
        and record.get("method") == _CREATE_ORDER
        and record.get("code") == "OK"
    ):
        return None
    trace_id = record.get("trace_id")
    # Checked, not trusted: it is printed inside a command the user copies.
    if isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id):
        return trace_id
    return None


def _traces_in_span_files(telemetry: TelemetrySettings) -> bool:
    """Whether every trace is written to the span files `poly trace` reads: the file exporter
    (the default without an OTLP endpoint) and a sampler that keeps them all."""
    keeps_all = telemetry.sampler in _KEEPS_EVERY_TRACE or (
        "traceidratio" in telemetry.sampler and telemetry.sampler_arg >= 1.0
    )
    return telemetry.tracing and telemetry.traces_exporter == "file" and keeps_all


def _child_environ() -> dict[str, str]:
    """The environment of a component: ours (each child reads its own settings through
    `kit.config`), with JSON logs, which the supervisor parses whatever the user's format."""
    return {**os.environ, "POLY_LOG_FORMAT": "json"}


def _module(component: str) -> str:
    return "gateway" if component == "gateway" else f"services.{component}"


def _shown(path: Path) -> str:
    """`path` as a command line shows it: relative to the working directory when inside it."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _alone(component: str) -> str:
    """The command that runs `component` by itself, as `poly up` does."""
    return f"{_shown(Path(sys.executable))} -m {_module(component)}"


def _poly() -> str:
    """The command that runs `poly` from here: the script installed beside our Python
    (``.venv/bin/poly`` after `make up`), else that Python running the CLI's module."""
    script = Path(sys.executable).with_name("poly")
    if script.is_file():
        return shlex.quote(_shown(script))
    return f"{shlex.quote(_shown(Path(sys.executable)))} -m services.cli"


def _trace_command(trace_id: str, home: Path) -> str:
    """The `poly trace` command that shows `trace_id` from the span files under `home`
    (``--home`` only when `home` is not the ``.poly`` it reads by default from here)."""
    where = "" if home == Path(".poly").absolute() else f" --home {shlex.quote(_shown(home))}"
    return f"{_poly()} trace{where} {trace_id}"


_MAILBOX = "smtp"
"""The development mailbox, in port checks: it listens on POLY_SMTP_PORT."""


def _move_port(component: str) -> str:
    return f"stop what holds it (another `poly up`?) or set POLY_{component.upper()}_PORT to a free port"


def _signal_name(code: int) -> str:
    """`` (SIGKILL)`` for an exit code of -9: a process ended by a signal."""
    try:
        return f" ({signal.Signals(-code).name})" if code < 0 else ""
    except ValueError:
        return ""


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
    serving: threading.Event = field(default_factory=threading.Event)
    """Set when this process itself logged that it is serving (not just anyone on its port)."""
    pump: threading.Thread | None = None


class Supervisor:
    def __init__(
        self,
        system: SystemSettings,
        *,
        components: tuple[str, ...] = (*config.SERVICES, "gateway"),
        out: IO[str] | None = None,
        ready_timeout: float = 60.0,
        log_format: str = "console",
    ) -> None:
        self._settings = system.settings
        self._smtp = system.smtp
        self._key_encryption_key_file = system.key_encryption_key_file
        self._children = {name: _Child(name) for name in components}
        width = max(len(name) for name in (*components, "mail"))
        self._output = Output(out or sys.stdout, log_format=log_format, width=width)
        self._stop = threading.Event()
        self._ready_timeout = ready_timeout
        self._width = width
        self._mailbox: mailbox.DevMailbox | None = None
        self._pre_exec = _die_with_parent_hook()
        # Until the first order's hint is printed, each line is searched for CreateOrder (a
        # substring test); after it, or when its trace would not be in the files, not even that.
        self._order_hint_pending = _traces_in_span_files(system.settings.telemetry)
        self._order_hint_lock = threading.Lock()

    def _say(
        self, name: str, text: str, *, level: str = "info", fields: Mapping[str, str] | None = None
    ) -> None:
        """A line of the supervisor's own (`name` is ``poly``, or ``mail`` for the mailbox);
        `fields` go into its JSON record (the console line shows `text` only)."""
        self._output.say(name, text, level=level, fields=fields)

    def _pump(self, name: str, stream: IO[str], serving: threading.Event) -> None:
        # Always read to the end: a child whose pipe fills up would block on its next log line.
        for line in stream:
            text = line.rstrip("\n")
            if not serving.is_set() and _is_serving_line(text):
                serving.set()
            self._output.relay(name, text, received=time.time())
            if self._order_hint_pending and _CREATE_ORDER in text:
                self._hint_placed_order(text)

    def _hint_placed_order(self, line: str) -> None:
        """Once per run, after the first successful CreateOrder: how to see its trace."""
        trace_id = _placed_order_trace(line)
        if trace_id is None:
            return
        with self._order_hint_lock:  # a restarted orders' pump may run beside its predecessor's
            if not self._order_hint_pending:
                return
            self._order_hint_pending = False
        command = _trace_command(trace_id, self._settings.home)
        self._say("poly", f"order placed: see its trace with `{command}`", fields={"trace_id": trace_id})

    def _spawn(self, child: _Child) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", _module(child.name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            # Own session: Ctrl-C reaches only the supervisor, which then drains each child.
            start_new_session=True,
            env=_child_environ(),
            preexec_fn=self._pre_exec,  # noqa: PLW1509 - only calls a pre-resolved prctl
        )
        child.process, child.started_at, child.ready, child.restart_at = (
            process,
            time.monotonic(),
            False,
            None,
        )
        child.serving = threading.Event()
        assert process.stdout is not None
        child.pump = threading.Thread(
            target=self._pump, args=(child.name, process.stdout, child.serving), daemon=True
        )
        child.pump.start()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop.set()

    def run(self) -> int:
        """Run until Ctrl-C or SIGTERM. 0 when every service started and stopped cleanly."""
        if not self._prepare_files():
            return 2
        host = self._settings.server.host
        taken = [name for name in self._children if port_in_use(host, self._port(name))]
        smtp = self._smtp
        if mailbox.wanted(smtp) and port_in_use(smtp.host, smtp.port):
            taken.append(_MAILBOX)  # else this system's emails would land in another's mailbox
        if taken:
            self._say("poly", self._ports_taken(taken), level="error")
            return 1
        metrics_taken = [
            f"{name} {port} (POLY_{name.upper()}_METRICS_PORT)"
            for name, port in self._metrics_ports().items()
            if port and port_in_use(self._settings.telemetry.metrics_host, port)
        ]
        if metrics_taken:
            self._say(
                "poly",
                f"metrics ports in use: {', '.join(metrics_taken)}; stop what holds them (another "
                "`poly up`?) or move each with its variable (0 turns a metrics endpoint off)",
                level="error",
            )
            return 1
        self._open_mailbox()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        status = 1
        try:
            for child in self._children.values():
                self._spawn(child)
            if self._await_ready():
                self._announce()
                while not self._stop.wait(0.2):
                    self._supervise()
                status = 0
            elif self._stop.is_set():
                status = 0
        finally:
            if not self._shutdown():
                status = 1
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._mailbox is not None:
                self._mailbox.stop()
        return status

    def _prepare_files(self) -> bool:
        """Certificates (created on the first run) and the auth service's key-encryption key."""
        directory = self._settings.tls.ca_file.parent
        if not all((directory / f"{name}.crt").exists() for name in ("ca", *config.COMPONENTS)):
            self._say("poly", f"creating certificates in {directory}…")
        try:
            tls.ensure_certificates(
                directory,
                config.COMPONENTS,
                trust_domain=self._settings.tls.trust_domain,
                namespace=self._settings.tls.namespace,
            )
            keys.ensure_key_encryption_key(self._key_encryption_key_file)
        except tls.CertificateError as error:
            self._say("poly", str(error), level="error")
            return False
        except OSError as error:
            where = error.filename or directory
            self._say(
                "poly",
                f"cannot write {where} ({error.strerror}); POLY_HOME moves the state directory",
                level="error",
            )
            return False
        return True

    def _metrics_ports(self) -> dict[str, int]:
        """Each component's /metrics port, as the component itself will read it."""
        return {name: config.load(name).telemetry.metrics_port for name in self._children}

    def _port(self, name: str) -> int:
        if name == _MAILBOX:
            return self._smtp.port
        try:
            return int(self._settings.peers[name].rpartition(":")[2])
        except ValueError:
            return 0

    def _ports_taken(self, taken: list[str]) -> str:
        if len(taken) == 1:
            [name] = taken
            return f"port {self._port(name)} is in use, so {name} cannot listen there: {_move_port(name)}"
        listed = ", ".join(f"{name} {self._port(name)}" for name in taken)
        return (
            f"ports in use: {listed}; stop what holds them (another `poly up`?) or move each with "
            f"POLY_<NAME>_PORT (e.g. POLY_{taken[0].upper()}_PORT)"
        )

    def _open_mailbox(self) -> None:
        smtp = self._smtp
        if not mailbox.wanted(smtp):
            return
        opened = mailbox.DevMailbox(
            self._settings.home / "mail", smtp.host, smtp.port, lambda text: self._say("mail", text)
        )
        try:
            opened.start()
        except (OSError, RuntimeError) as error:
            self._say(
                "poly",
                f"no development mailbox: cannot listen on {smtp.host}:{smtp.port} ({error}); emails go to "
                "whatever listens there. POLY_SMTP_PORT moves both",
                level="warning",
            )
            return
        self._mailbox = opened

    def _await_ready(self) -> bool:
        started = time.monotonic()
        deadline = started + self._ready_timeout
        notice = first_notice = started + _WAIT_NOTICE_FIRST
        pending = list(self._children)
        while pending and not self._stop.is_set():
            for name in list(pending):
                child = self._children[name]
                if child.process is not None and child.process.poll() is not None:
                    if child.pump is not None:
                        child.pump.join(1.0)  # its last lines first: the message points at them
                    self._say("poly", self._exited_early(name, child.process.returncode), level="error")
                    return False
                if self._is_ready(child, timeout=1.0):
                    child.ready = True
                    pending.remove(name)
            now = time.monotonic()
            if pending and now > deadline:
                for name in pending:
                    self._say("poly", self._not_healthy(name), level="error")
                return False
            if pending and now >= notice:
                self._say("poly", self._waiting(pending, now - started, again=notice > first_notice))
                notice = now + _WAIT_NOTICE_EVERY
            self._stop.wait(0.2)
        return not pending

    def _waiting(self, pending: list[str], waited: float, *, again: bool) -> str:
        if not again:
            return f"waiting for {', '.join(pending)} to be healthy…"
        return f"still waiting for {', '.join(pending)} ({waited:.0f}s of {self._ready_timeout:.0f}s)…"

    def _exited_early(self, name: str, code: int) -> str:
        text = f"{name} exited with code {code}{_signal_name(code)} before it was ready"
        port = self._port(name)
        if port_in_use(self._settings.server.host, port):
            return f"{text}: port {port} is in use; {_move_port(name)}"
        return f"{text}; its last lines are above, or run `{_alone(name)}` to see it fail on its own"

    def _not_healthy(self, name: str) -> str:
        child = self._children[name]
        if not child.serving.is_set():
            state = "it has not said `serving` yet (its last lines above show how far it got)"
        else:
            answer, peer = self._health(name, timeout=1.0), self._settings.peers[name]
            state = f"it said `serving`, but its health check on {peer} answers {answer}"
        return (
            f"{name} is not healthy after {self._ready_timeout:.0f}s: {state}; "
            f"run `{_alone(name)}` to watch it start on its own"
        )

    def _is_ready(self, child: _Child, *, timeout: float) -> bool:
        """This very process says it is serving, and the port's health check agrees.

        Health alone could be answered by another process on the same port (a second
        `poly up`, or a stale service), while ours failed to bind.
        """
        return (
            child.process is not None
            and child.process.poll() is None
            and child.serving.is_set()
            and self._health(child.name, timeout=timeout) == "SERVING"
        )

    def _health(self, name: str, *, timeout: float) -> str:
        if name == "gateway":
            return edge_status(self._settings, timeout=timeout)
        return health_status(self._settings, name, timeout=timeout)

    def _announce(self) -> None:
        metrics = self._metrics_ports()
        for name, child in self._children.items():
            pid = child.process.pid if child.process else "-"
            kind = "http" if name == "gateway" else "grpc"
            scrape = f"metrics :{metrics[name]:<5}" if metrics.get(name) else "metrics off  "
            self._say(
                "poly",
                f"ready  {name:<{self._width}}  {kind} {self._settings.peers[name]:<16} {scrape}  pid {pid}",
            )
        if self._mailbox is not None:
            self._say("poly", f"emails land in {self._mailbox.directory}/ (development mailbox)")
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
                code = process.returncode
                if child.pump is not None:
                    child.pump.join(1.0)  # its last lines first: the message points at them
                why = "; its last lines above say why" if code > 0 else ""
                self._say(
                    "poly",
                    f"{child.name} exited with code {code}{_signal_name(code)}; "
                    f"restarting in {child.backoff:.0f}s{why}",
                    level="error",
                )
                child.backoff = min(child.backoff * 2, _BACKOFF_MAX)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)
            elif process is not None and not child.ready and self._is_ready(child, timeout=0.5):
                child.ready = True
                self._say("poly", f"ready  {child.name} again (restart {child.restarts})")

    def _shutdown(self) -> bool:
        """SIGTERM every child, SIGKILL what outlives the grace period; True if all exited 0."""
        running = [c for c in self._children.values() if c.process and c.process.poll() is None]
        # Stopped while starting (Ctrl-C before ready): a service that had not yet installed its
        # own SIGTERM handler ends by the signal, which is what was asked, not a failure.
        cancelled = not all(c.ready for c in self._children.values())
        if running:
            self._say("poly", f"stopping {len(running)} services…")
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.server.grace_seconds + 5
        clean = True
        for child in running:
            assert child.process is not None
            try:
                code = child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
                self._say(
                    "poly",
                    f"{child.name} did not stop within the grace period; killed it "
                    "(POLY_GRACE_SECONDS sets the period)",
                    level="warning",
                )
                clean = False
                continue
            self._say(
                "poly",
                f"{child.name} exited with code {code}{_signal_name(code)}",
                level="info" if code == 0 else "warning",
            )
            clean &= code == 0 or (cancelled and code == -signal.SIGTERM)
        for child in self._children.values():
            if child.pump is not None:
                child.pump.join(2.0)  # the last log lines of each child are printed before we go
        if running:
            done = "start-up cancelled; stopped" if cancelled else "stopped"
            if clean:
                self._say("poly", done)
            else:
                self._say("poly", f"{done}, not cleanly (exit codes above)", level="warning")
        return clean
