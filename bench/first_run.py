"""The first five minutes, by measurement: fresh clone to a running system, and `poly`'s answer time.

What is measured
----------------
* set-up   ``git clone`` of this checkout's HEAD into a temporary folder, then ``make up``
           there with every package cache empty (uv, pip and npm caches pointed at new empty
           folders), until ``poly up`` prints "all services SERVING". Each step's share is
           read from the time its first output line appeared ("== fetching uv", "== creating",
           "== installing …", "== installing buf", poly up's own lines). Ports are free ones, so
           a running ``make up`` elsewhere does not disturb it.
* cli      wall time of ``poly --help`` and ``poly status`` (against that running system),
           median and slowest of ``RUNS`` runs each, after one warm-up run.

Run ``python bench/first_run.py`` (``--pip`` measures the plain-pip fallback instead). Numbers,
not pass/fail; the machine's load at the start is printed beside them, since a busy machine
doubles everything.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 10
READY = "all services SERVING"
COMPONENT_PORTS = ("AUTH", "USERS", "ORDERS", "PAYMENTS", "NOTIFICATIONS", "GATEWAY", "SMTP")
STEP = re.compile(r"^== (.*)|^poly +\| (creating certificates|ready|all services SERVING)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _environ(scratch: Path, installer: str) -> dict[str, str]:
    environ = dict(os.environ)
    environ.update(
        UV_CACHE_DIR=str(scratch / "cache" / "uv"),
        PIP_NO_CACHE_DIR="1",
        npm_config_cache=str(scratch / "cache" / "npm"),
        XDG_CACHE_HOME=str(scratch / "cache" / "xdg"),
        POLY_INSTALLER=installer,
    )
    environ.update({f"POLY_{name}_PORT": str(_free_port()) for name in COMPONENT_PORTS})
    return environ


def _timed_make_up(
    clone: Path, environ: dict[str, str]
) -> tuple[subprocess.Popen[str], list[tuple[float, str]]]:
    started = time.monotonic()
    up = subprocess.Popen(
        ["make", "up"],
        cwd=clone,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    steps: list[tuple[float, str]] = []
    assert up.stdout is not None
    for line in up.stdout:
        if STEP.search(line):
            steps.append((time.monotonic() - started, line.strip()))
        if READY in line:
            break
    else:
        raise SystemExit(f"make up ended with {up.wait()} before it was ready")
    threading.Thread(target=lambda: [None for _ in up.stdout or ()], daemon=True).start()
    return up, steps


def _wall(command: list[str], cwd: Path, environ: dict[str, str]) -> list[float]:
    times = []
    for _ in range(RUNS + 1):
        started = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=environ, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pip", action="store_true", help="measure the plain-pip fallback")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="poly-first-run-") as scratch_name:
        scratch = Path(scratch_name)
        clone = scratch / "polyservice"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        environ = _environ(scratch, "pip" if args.pip else "uv")
        up, steps = _timed_make_up(clone, environ)
        try:
            print(f"\nmake up, fresh clone, empty caches ({environ['POLY_INSTALLER']}):")
            for at, line in steps:
                print(f"  {at:6.1f} s  {line[:90]}")
            poly = str(clone / ".venv" / "bin" / "poly")
            for name, command in (("poly --help", [poly, "--help"]), ("poly status", [poly, "status"])):
                times = _wall(command, clone, environ)
                print(
                    f"{name:<12} median {statistics.median(times) * 1000:5.0f} ms   "
                    f"slowest {max(times) * 1000:5.0f} ms   ({RUNS} runs)"
                )
        finally:
            os.killpg(up.pid, signal.SIGINT)
            up.wait(60)


if __name__ == "__main__":
    sys.exit(main())
