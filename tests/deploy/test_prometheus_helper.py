"""tests/support/prometheus.py against the real server: it scrapes what a test serves, and its
API reports the samples and the targets' health, including a target that is down."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server

from tests.support import prometheus as prometheus_support
from tests.support.env import free_port
from tests.support.prometheus import running_prometheus

pytestmark = pytest.mark.slow


@pytest.fixture
def exposition() -> Iterator[tuple[int, Counter]]:
    """A prometheus_client exposition on 127.0.0.1, with one counter the test moves."""
    registry = CollectorRegistry()
    counter = Counter("poly_probe_calls", "Calls the probe made.", ["kind"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port, counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_counter_the_test_moves_shows_up_through_the_api(
    exposition: tuple[int, Counter], tmp_path: Path
) -> None:
    port, counter = exposition
    with running_prometheus({"probe": f"127.0.0.1:{port}"}, tmp_path) as prometheus:
        [target] = prometheus.wait_for_targets_up()
        assert (target.job, target.instance, target.health) == ("probe", f"127.0.0.1:{port}", "up")
        assert target.scrape_url == f"http://127.0.0.1:{port}/metrics"

        counter.labels(kind="unary").inc(3)
        [sample] = prometheus.wait_for(
            'poly_probe_calls_total{job="probe"}', lambda found: [s.value for s in found] == [3.0]
        )
        assert sample.labels == {
            "__name__": "poly_probe_calls_total",
            "job": "probe",
            "instance": f"127.0.0.1:{port}",
            "kind": "unary",
        }
        counter.labels(kind="unary").inc(2)
        prometheus.wait_for(
            'poly_probe_calls_total{job="probe"}', lambda found: [s.value for s in found] == [5.0]
        )
        assert [s.value for s in prometheus.query('up{job="probe"}')] == [1.0]


def test_a_target_that_is_down_is_reported_and_named(exposition: tuple[int, Counter], tmp_path: Path) -> None:
    port, _ = exposition
    closed = free_port()  # nothing listens there
    with running_prometheus(
        {"probe": f"127.0.0.1:{port}", "absent": f"127.0.0.1:{closed}"}, tmp_path
    ) as prometheus:
        [down] = prometheus.wait_for('up{job="absent"}', lambda found: [s.value for s in found] == [0.0])
        assert down.labels["instance"] == f"127.0.0.1:{closed}"
        absent = next(target for target in prometheus.targets() if target.job == "absent")
        assert absent.health == "down"
        assert "connection refused" in absent.last_error
        with pytest.raises(AssertionError, match=rf"absent 127\.0\.0\.1:{closed} down"):
            prometheus.wait_for_targets_up(timeout=1)


def test_a_query_prometheus_cannot_parse_fails_with_its_reason(
    exposition: tuple[int, Counter], tmp_path: Path
) -> None:
    port, _ = exposition
    with running_prometheus({"probe": f"127.0.0.1:{port}"}, tmp_path) as prometheus:
        with pytest.raises(AssertionError, match="bad_data"):
            prometheus.query("sum by (")
        assert [s.value for s in prometheus.query("1 + 1")] == [2.0]


def test_a_port_taken_before_prometheus_binds_it_is_retried_on_another(
    exposition: tuple[int, Counter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, _ = exposition
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(prometheus_support, "free_port", lambda: next(ports))
        with running_prometheus({"probe": f"127.0.0.1:{port}"}, tmp_path) as prometheus:
            assert prometheus.port != taken
            assert [s.value for s in prometheus.query("1")] == [1.0]
