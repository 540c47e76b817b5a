"""deploy/observability/: the rules pass promtool and their unit tests, the example config is
valid, the dashboard is well-formed PromQL, and everything reads only the metric names the
kit exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.env import ROOT
from tests.support.prometheus import binary

HERE = ROOT / "deploy" / "observability"
RULES = HERE / "prometheus-rules.yml"
RULE_TESTS = HERE / "prometheus-rules.test.yml"
CONFIG = HERE / "prometheus.yml"
DASHBOARD = HERE / "grafana-dashboard.json"

# The names the kit and the edge export (issue 17); rules and panels may read nothing else,
# apart from Prometheus' own `up`, prometheus-client's process_* and the recorded series.
EXPORTED = frozenset(
    {
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "poly_grpc_server_in_flight_calls",
        "poly_grpc_server_max_concurrent_calls",
        "poly_grpc_server_refused_calls_total",
        "grpc_client_started_total",
        "grpc_client_handled_total",
        "grpc_client_handling_seconds",
        "http_server_request_duration_seconds",
        "http_server_active_requests",
        "poly_bus_events_total",
        "poly_bus_outbox_pending_deliveries",
        "poly_bus_outbox_oldest_pending_age_seconds",
        "poly_bus_apply_delay_seconds",
        "poly_db_pool_checked_out",
        "poly_db_pool_overflow",
        "poly_db_pool_size",
        "poly_tls_certificate_expiry_seconds",
        "poly_otel_spans_dropped_total",
        "poly_build_info",
    }
)
HISTOGRAMS = frozenset(
    {
        "grpc_server_handling_seconds",
        "grpc_client_handling_seconds",
        "http_server_request_duration_seconds",
        "poly_bus_apply_delay_seconds",
    }
)
SERIES = (EXPORTED - HISTOGRAMS) | {
    f"{h}{part}" for h in HISTOGRAMS for part in ("_bucket", "_sum", "_count")
}
PROCESS = re.compile(r"process_[a-z_]+")
SEVERITIES = {"warning", "critical"}

_STRINGS = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`""")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NAME = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"})
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def metric_names(promql: str) -> set[str]:
    """The metric names `promql` selects: what is left once strings, label matchers, ranges,
    grouping clauses, functions and keywords are taken out (the PromQL itself is checked by
    promtool, so this only has to read valid expressions)."""
    text = _STRINGS.sub('""', promql)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    return {
        match.group(1)
        for match in _NAME.finditer(text)
        if match.group(2) is None and match.group(1).lower() not in _KEYWORDS
    }


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside it


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel query and the label_values() of every query variable."""
    dashboard = _dashboard()
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["definition"])
            assert found, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            yield f"variable {variable['name']}", found.group(1)


def _concrete(promql: str) -> str:
    """A dashboard query with Grafana's variables filled in, so promtool can parse it."""
    return _VARIABLE.sub(lambda found: "5m" if found.group(1).startswith("__") else "orders", promql)


def _anchors(markdown: Path) -> set[str]:
    """The link anchors GitHub gives the page's headings."""
    headings = re.findall(r"^#+ (.+)$", markdown.read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def _promtool(*args: str | Path, cwd: Path = HERE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_rules_pass_promtool_check_rules() -> None:
    checked = _promtool("check", "rules", RULES)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    tested = _promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_example_scrape_config_is_valid_and_scrapes_every_component_at_its_default_port() -> None:
    checked = _promtool("check", "config", CONFIG.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    scraped = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert scraped == {
        "gateway": ["127.0.0.1:9460"],
        "auth": ["127.0.0.1:9461"],
        "users": ["127.0.0.1:9462"],
        "orders": ["127.0.0.1:9463"],
        "payments": ["127.0.0.1:9464"],
        "notifications": ["127.0.0.1:9465"],
    }
    assert config["rule_files"] == [RULES.name]


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown quiet"
    assert (fires | quiet) - alerts == set(), "tests of alerts that do not exist"


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_every_alert_says_how_bad_it_is_and_where_to_look(name: str) -> None:
    alert = _alerts()[name]
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    assert "{{ $labels.job }}" in annotations["summary"]
    assert "{{ $labels.job }}" in annotations["description"]
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page == "deploy/observability/README.md"
    assert f"Runbook: {annotations['runbook_url']}" in annotations["description"]
    assert anchor in _anchors(HERE / "README.md"), f"README.md has no heading for #{anchor}"
    if "grpc_method" in alert["expr"] or "job_method" in alert["expr"]:
        assert "{{ $labels.grpc_method }}" in annotations["summary"]


def test_the_server_error_alert_has_a_traffic_floor() -> None:
    expr = _alerts()["PolyGrpcServerErrorRatioHigh"]["expr"]
    assert "job_method:grpc_server_handled:rate5m >= 0.1" in expr


def test_the_dashboard_is_grafana_schema_39_with_a_data_source_and_a_job_variable() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] == 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert variables["job"]["includeAll"] and variables["job"]["multi"]
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == ["Edge (HTTP/JSON)", "gRPC servers", "Event bus", "Resources"]
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'job=~"$job"' in target["expr"], f"{panel['title']}: not filtered by the job variable"


def test_every_dashboard_query_is_promql_that_promtool_accepts(tmp_path: Path) -> None:
    queries = list(_dashboard_queries())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": _concrete(expr)}
                    for index, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    as_rules = tmp_path / "dashboard-queries.yml"
    as_rules.write_text(yaml.safe_dump(rules), encoding="utf-8")
    checked = _promtool("check", "rules", as_rules, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _sources() -> Iterator[tuple[str, str]]:
    for rule in _rules():
        yield f"rule {rule.get('alert') or rule['record']}", rule["expr"]
    yield from _dashboard_queries()


@pytest.mark.parametrize(("where", "promql"), list(_sources()), ids=lambda value: str(value)[:60])
def test_only_exported_metric_names_are_read(where: str, promql: str) -> None:
    allowed = SERIES | _recorded() | {"up"}
    unknown = {name for name in metric_names(promql) if name not in allowed and not PROCESS.fullmatch(name)}
    assert unknown == set(), f"{where} reads metrics nobody exports: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("promql", "names"),
    [
        (
            'sum by (job) (rate(grpc_server_handled_total{grpc_code=~"Internal|x"}[5m]))',
            {"grpc_server_handled_total"},
        ),
        ("a:b:c > 0.05 and on (job) up offset 15m", {"a:b:c", "up"}),
        ('histogram_quantile(0.99, sum by (le) (x_bucket{job=~"$job"}[$__rate_interval]))', {"x_bucket"}),
        ('label_replace(y, "dst", "$1", "src", "(.*)") unless z', {"y", "z"}),
        ("7 * 86400 > bool time()", set()),
    ],
    ids=["matchers", "recorded-and-offset", "grafana-variables", "strings", "no-names"],
)
def test_metric_names_finds_the_selected_names(promql: str, names: set[str]) -> None:
    assert metric_names(promql) == names
