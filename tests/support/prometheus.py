"""The real Prometheus server in a test: it scrapes the given targets every second, and the test
asks it questions through its HTTP API, as an operator's dashboard would.

Needs Debian's ``prometheus`` package (the ``prometheus`` server and ``promtool``), which
.ci/run installs. Without it a test is skipped, and under ``CI=true`` it fails instead.
Prometheus takes up to 5 s after it is ready to start scraping (its discovery hands new
targets over in 5 s batches), so wait for what you need rather than querying once:

    with running_prometheus({"orders": "127.0.0.1:9463"}, tmp_path) as prometheus:
        prometheus.wait_for_targets_up()
        prometheus.wait_for('grpc_server_handled_total{grpc_method="CreateOrder"}')
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.env import free_port
from tests.support.processes import Process
from tests.support.waiting import eventually

__all__ = ["PACKAGE", "Prometheus", "Sample", "Target", "binary", "running_prometheus"]

PACKAGE = "Debian's prometheus package (apt-get install --no-install-recommends prometheus)"
"""What provides both binaries; named in every skip and failure."""

_START_ATTEMPTS = 3  # a free port can be taken between choosing it and Prometheus binding it


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``. Missing: the test is skipped, or fails under CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not on PATH: install {PACKAGE}; .ci/run does"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Sample:
    """One element of an instant query's answer."""

    labels: Mapping[str, str]
    """The series' labels, ``__name__`` included when the expression keeps it."""
    value: float


@dataclass(frozen=True)
class Target:
    """One scrape target as Prometheus sees it (``/api/v1/targets``)."""

    job: str
    instance: str
    health: str
    """``up``, ``down``, or ``unknown`` before its first scrape."""
    last_error: str
    scrape_url: str


class _PortTaken(Exception):
    pass


class Prometheus:
    """A running Prometheus server on 127.0.0.1; `running_prometheus` starts and stops it."""

    def __init__(self, process: Process, port: int, jobs: Sequence[str]) -> None:
        self.process = process
        self.port = port
        self.jobs = tuple(jobs)
        self.url = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> list[Sample]:
        """An instant query at the current time: a vector's samples, or a scalar as one sample."""
        data = self._api("/api/v1/query", query=promql)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [Sample(dict(item["metric"]), float(item["value"][1])) for item in result]
        if kind == "scalar":
            return [Sample({}, float(result[1]))]
        raise AssertionError(f"{promql!r} is a {kind}, not an instant vector or scalar")

    def targets(self) -> list[Target]:
        """The active scrape targets and their health."""
        data = self._api("/api/v1/targets", state="active")
        return [
            Target(
                job=item["labels"].get("job", ""),
                instance=item["labels"].get("instance", ""),
                health=item["health"],
                last_error=item.get("lastError", ""),
                scrape_url=item["scrapeUrl"],
            )
            for item in data["activeTargets"]
        ]

    def wait_for_targets_up(self, *, timeout: float = 30.0) -> list[Target]:
        """Every target, once each configured job has one and all have been scraped successfully."""
        seen: list[Target] = []

        def all_up() -> list[Target] | None:
            seen[:] = self.targets()
            jobs = {target.job for target in seen}
            return seen if jobs >= set(self.jobs) and all(t.health == "up" for t in seen) else None

        try:
            return eventually(all_up, timeout=timeout, what="every target to be up")
        except AssertionError:
            states = [f"{t.job} {t.instance} {t.health} {t.last_error}".strip() for t in seen]
            raise AssertionError(f"targets not all up after {timeout}s: {states}") from None

    def wait_for(
        self,
        promql: str,
        until: Callable[[list[Sample]], bool] = bool,
        *,
        timeout: float = 30.0,
    ) -> list[Sample]:
        """The answer to `promql` once `until` accepts it (by default: once it is not empty)."""
        return eventually(
            lambda: samples if until(samples := self.query(promql)) else None,
            timeout=timeout,
            what=f"Prometheus to answer {promql!r} as expected",
        )

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL (`Process.stop`)."""
        self.process.stop()

    def _api(self, path: str, **parameters: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(parameters)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # a bad query is a 400 whose body says why
            with error:
                detail = error.read().decode("utf-8", "replace")
            raise AssertionError(f"Prometheus refused {path} {parameters}: {error.code} {detail}") from None
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus answered {path} {parameters} with {body}")
        return body["data"]


def _config(targets: Mapping[str, str], rule_files: Sequence[Path]) -> str:
    """The scrape configuration, as JSON (which is YAML): one job per entry, scraped every second."""
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path.resolve()) for path in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [address]}]}
                for job, address in targets.items()
            ],
        },
        indent=2,
    )


def _ready(prometheus: Prometheus) -> bool:
    process = prometheus.process
    if process.popen.poll() is not None:
        try:  # its last lines may still be on their way through the pipe
            process.wait_for_line(lambda line: "address already in use" in line, timeout=5)
        except AssertionError:
            raise AssertionError(
                f"prometheus exited with {process.popen.returncode}:\n{process.output()}"
            ) from None
        raise _PortTaken
    try:
        with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False  # not listening yet, or 503 while the TSDB opens


def _launch(
    executable: str, config: Path, storage: Path, timeout: float, jobs: Sequence[str]
) -> Prometheus | None:
    """A ready Prometheus on a free port, or None if that port was taken before it could bind it."""
    port = free_port()
    argv = [
        executable,
        f"--config.file={config}",
        f"--storage.tsdb.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    prometheus = Prometheus(Process(argv, {}), port, jobs)
    try:
        eventually(lambda: _ready(prometheus), timeout=timeout, what="prometheus to be ready")
    except _PortTaken:
        prometheus.stop()
        return None
    except BaseException:
        prometheus.stop()
        raise
    return prometheus


@contextlib.contextmanager
def running_prometheus(
    targets: Mapping[str, str],
    directory: Path,
    *,
    rule_files: Sequence[Path] = (),
    timeout: float = 30.0,
) -> Iterator[Prometheus]:
    """A Prometheus scraping `targets` ({job: "127.0.0.1:port"}) every second, with its config and
    storage in `directory` and `rule_files` loaded, ready to answer queries; stopped on the way out."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(_config(targets, rule_files), encoding="utf-8")
    executable = binary("prometheus")
    prometheus = None
    for _ in range(_START_ATTEMPTS):
        prometheus = _launch(executable, config, directory / "data", timeout, list(targets))
        if prometheus is not None:
            break
    if prometheus is None:
        raise AssertionError(f"prometheus found its port taken {_START_ATTEMPTS} times")
    try:
        yield prometheus
    finally:
        prometheus.stop()
