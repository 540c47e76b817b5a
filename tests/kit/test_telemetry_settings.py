"""kit.telemetry_settings: the OTEL_* variables and the metrics/log settings, read by kit.config."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.kit import config


def test_defaults_keep_spans_in_a_file_and_serve_metrics_on_the_components_port() -> None:
    telemetry = config.load("payments", {"POLY_HOME": "/tmp/h"}).telemetry
    assert telemetry.service_name == "payments"
    assert telemetry.traces_exporter == "file"
    assert telemetry.trace_file == Path("/tmp/h/traces/payments.jsonl")
    assert (telemetry.metrics_host, telemetry.metrics_port) == ("127.0.0.1", 9464)
    assert telemetry.sampler == "parentbased_always_on"
    assert telemetry.tracing


def test_an_otlp_endpoint_switches_to_otlp_and_the_standard_variables_apply() -> None:
    telemetry = config.load(
        "orders",
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
            "OTEL_SERVICE_NAME": "orders-eu",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=shop%2Cweb",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=secret-value",
            "POLY_ORDERS_METRICS_PORT": "0",
        },
    ).telemetry
    assert (telemetry.traces_exporter, telemetry.otlp_endpoint, telemetry.otlp_insecure) == (
        "otlp",
        "http://collector:4317",
        True,
    )
    assert telemetry.service_name == "orders-eu"
    assert telemetry.environment == "prod"
    assert telemetry.resource_attributes == {"team": "shop,web"}
    assert (telemetry.sampler, telemetry.sampler_arg) == ("parentbased_traceidratio", 0.25)
    assert telemetry.metrics_port == 0
    assert "secret-value" not in repr(telemetry)  # headers may carry a vendor's key


def test_sdk_disabled_or_exporter_none_records_no_spans() -> None:
    assert not config.load("orders", {"OTEL_SDK_DISABLED": "true"}).telemetry.tracing
    assert not config.load("orders", {"OTEL_TRACES_EXPORTER": "none"}).telemetry.tracing


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "no-equals"}, "OTEL_RESOURCE_ATTRIBUTES"),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        ),
        ({"POLY_ORDERS_METRICS_PORT": "70000"}, "POLY_ORDERS_METRICS_PORT"),
        ({"POLY_LOG_FORMAT": "xml"}, "POLY_LOG_FORMAT"),
    ],
    ids=["endpoint", "protocol", "sampler", "ratio", "exporter", "resource", "batch", "port", "log-format"],
)
def test_a_bad_value_is_named_at_start_up(environ: dict[str, str], named: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load("orders", environ)
    assert named in str(caught.value)


def test_a_malformed_otlp_setting_is_named_without_echoing_a_credential() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.load(
            "orders",
            {
                "OTEL_EXPORTER_OTLP_HEADERS": "api-key: SECRET-HEADER-VALUE",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://user:SECRET-PASSWORD@collector:4317",
            },
        )
    text = str(caught.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in text and "OTEL_EXPORTER_OTLP_ENDPOINT" in text
    assert "SECRET" not in text


def test_the_service_name_follows_the_specs_precedence() -> None:
    resource_only = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=shop-orders"}
    assert config.load("orders", resource_only).telemetry.service_name == "shop-orders"
    both = {**resource_only, "OTEL_SERVICE_NAME": "orders-eu"}
    assert config.load("orders", both).telemetry.service_name == "orders-eu"
    assert config.load("orders", {}).telemetry.service_name == "orders"
