"""gateway.arguments: the command line and a TOML file become one EdgeConfig, or one
ConfigError listing every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.arguments import from_arguments
from gateway.config import (
    ConfigError,
    EdgeConfig,
    Limits,
    Target,
    Transport,
    parse_target,
)
from gateway.tls import CertificateFiles

SERVICE = "acme.library.v1.LibraryService"


def test_the_smallest_command_line(tmp_path: Path) -> None:
    found = from_arguments(["--reflect", f"--backend={SERVICE}=localhost:50051"])
    assert found == EdgeConfig(backends={SERVICE: Target("localhost:50051", Transport("tls"))})
    assert found.reflect and (found.host, found.port) == ("127.0.0.1", 8080)
    assert found.tokens is None, "no key set to verify tokens against: limited by address"


def test_the_default_transport_comes_from_the_tls_flags(pem: dict[str, Path]) -> None:
    found = from_arguments(
        [
            "--reflect",
            f"--cacert={pem['ca']}",
            f"--cert={pem['cert']}",
            f"--key={pem['key']}",
            f"--backend={SERVICE}=a:1",
            "--backend=acme.other.v1.Other=b:2,plaintext",
            "--default-backend=c:3,server-name=c.internal",
        ]
    )
    mtls = Transport("mtls", pem["ca"], pem["cert"], pem["key"])
    assert found.backends == {
        SERVICE: Target("a:1", mtls),
        "acme.other.v1.Other": Target("b:2", Transport("plaintext")),
    }
    assert found.default_backend == Target(
        "c:3", Transport("mtls", pem["ca"], pem["cert"], pem["key"], "c.internal")
    )


def test_a_complete_file_and_arguments_that_override_it(tmp_path: Path, pem: dict[str, Path]) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        f"""
listen = "0.0.0.0:9090"
descriptor_set = "api.binpb"
refresh_seconds = 30
grace_seconds = 25
title = "Library API"
log_level = "warning"

[tls]
cacert = "{pem["ca"]}"

[backends."{SERVICE}"]
address = "library:50051"

[backends."acme.other.v1.Other"]
address = "other:50051"
plaintext = true

[default_backend]
address = "api:443"

[limits]
timeout_seconds = 10
max_body_bytes = 65536
cors_origins = ["https://app.example.com"]
trusted_proxies = ["10.1.2.3/8", "fd00::1"]
auth_failures_per_address = 7
"""
    )
    found = from_arguments(
        [
            "--config",
            str(file),
            "--listen=127.0.0.1:9191",
            "--rate-per-second=5",
            "--auth-failure-window-seconds=30",
        ]
    )
    tls = Transport("tls", pem["ca"])
    assert found == EdgeConfig(
        backends={
            SERVICE: Target("library:50051", tls),
            "acme.other.v1.Other": Target("other:50051", Transport("plaintext")),
        },
        default_backend=Target("api:443", tls),
        descriptor_set=Path("api.binpb"),
        refresh_seconds=30.0,
        grace_seconds=25.0,
        host="127.0.0.1",
        port=9191,
        title="Library API",
        limits=Limits(
            timeout_seconds=10.0,
            max_body_bytes=65536,
            rate_per_second=5.0,
            cors_origins=("https://app.example.com",),
            trusted_proxies=("10.0.0.0/8", "fd00::1/128"),
            auth_failures_per_address=7,
            auth_failure_window_seconds=30.0,
        ),
        log_level="WARNING",
    )
    assert from_arguments(["--config", str(file), "--reflect"]).reflect


def _problems_of(file: Path) -> str:
    with pytest.raises(ConfigError) as raised:
        from_arguments(["--config", str(file)])
    assert str(raised.value).startswith("invalid gateway configuration:\n  - ")
    return "\n".join(raised.value.problems)


def test_every_problem_of_a_file_is_listed_at_once(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(
        """
listen = "nowhere"
descriptor_set = "a.binpb"
reflect = true
refresh_seconds = -1
grace_seconds = 601
colour = "blue"

[backends.NotQualified]
address = "a:1"

[backends."acme.v1.Library"]
adress = "typo:1"

[limits]
max_body_bytes = 10
timeout_seconds = "soon"
burst = 3
trusted_proxies = ["10.0.0.0/8", "proxy.internal"]
auth_failures_per_address = -1
"""
    )
    problems = _problems_of(file)
    for expected in [
        "unknown keys colour",
        "listen: expected host:port, got 'nowhere'",
        "descriptor_set and reflect exclude each other",
        "refresh_seconds: expected 0 (SIGHUP only) or 1 to 86400 seconds, got -1",
        "grace_seconds: expected 0 to 600 seconds, got 601",
        "backends.NotQualified: not a full service name",
        "backends.acme.v1.Library: expected an address host:port, got None",
        "backends.acme.v1.Library: unknown keys adress",
        "limits.max_body_bytes: must be between 1024",
        "limits.timeout_seconds: expected a number, got 'soon'",
        "limits: unknown keys burst",
        "limits.trusted_proxies: expected IP addresses or CIDRs, got 'proxy.internal'",
        "limits.auth_failures_per_address: must be between 0",
    ]:
        assert expected in problems, problems


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        ([f"--backend={SERVICE}=a:1"], "no route source"),
        (["--reflect"], "no backend"),
        (["--reflect", "--backend=Library=a:1"], "expected package.Service=host:port"),
        (["--config=/nowhere.toml"], "cannot read /nowhere.toml"),
        (
            ["--reflect", f"--backend={SERVICE}=a:1", "--metrics-listen=9460"],
            "metrics_listen: expected host:port",
        ),
        (
            ["--reflect", f"--backend={SERVICE}=a:1", "--metrics-listen=:0"],
            "metrics_listen: expected host:port",
        ),
    ],
    ids=[
        "no-source",
        "no-backend",
        "unqualified-service",
        "unreadable-file",
        "metrics-port-only",
        "metrics-port-0",
    ],
)
def test_command_line_problems(argv: list[str], problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_arguments(argv)
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_wrong_types_in_a_file_are_problems_not_crashes(tmp_path: Path) -> None:
    file = tmp_path / "types.toml"
    file.write_text(
        """
tls = "mtls"
limits = [1, 2]
backends = "library:50051"
reflect = "no"
title = { text = "x" }
refresh_seconds = nan
"""
    )
    problems = _problems_of(file)
    for expected in [
        "tls: expected a table ([tls]), got str",
        "limits: expected a table ([limits]), got list",
        "backends: expected a table ([backends]), got str",
        "reflect: expected true or false, got 'no'",
        "title: expected a string",
        "refresh_seconds: expected 0 (SIGHUP only) or 1 to 86400 seconds, got nan",
    ]:
        assert expected in problems, problems


@pytest.mark.parametrize("seconds", ["0.0001", "inf", "100000"])
def test_refresh_intervals_that_would_spin_or_never_come_are_refused(seconds: str) -> None:
    with pytest.raises(ConfigError, match="refresh_seconds"):
        from_arguments(["--reflect", f"--backend={SERVICE}=a:1", f"--refresh-seconds={seconds}"])


def test_a_misspelt_tls_key_is_a_problem_not_a_silent_downgrade(tmp_path: Path, pem: dict[str, Path]) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        f'reflect = true\n[tls]\nca_file = "{pem["ca"]}"\n[backends."{SERVICE}"]\naddress = "a:1"\n'
    )
    with pytest.raises(ConfigError, match="tls: unknown keys ca_file"):
        from_arguments(["--config", str(file)])


def test_transport_flags_replace_the_files_tls_table(tmp_path: Path, pem: dict[str, Path]) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        f'reflect = true\n[tls]\ncacert = "{pem["ca"]}"\n[backends."{SERVICE}"]\naddress = "a:1"\n'
    )
    assert from_arguments(["--config", str(file)]).backends[SERVICE].transport == Transport("tls", pem["ca"])
    found = from_arguments(["--config", str(file), "--plaintext"])
    assert found.backends[SERVICE].transport == Transport("plaintext")


def test_plaintext_false_over_a_plaintext_default_means_tls(tmp_path: Path) -> None:
    problems: list[str] = []
    found = parse_target("h:1,server-name=api", Transport("plaintext"), problems, where="t")
    assert found is None and "server_name needs TLS" in problems[0]
    file = tmp_path / "gateway.toml"
    file.write_text(
        "reflect = true\n[tls]\nplaintext = true\n"
        '[backends."acme.v1.X"]\naddress = "h:1"\nplaintext = false\nserver_name = "api"\n'
    )
    target = from_arguments(["--config", str(file)]).backends["acme.v1.X"]
    assert target == Target("h:1", Transport("tls", server_name="api"))


def test_a_file_that_is_not_toml(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text("listen = \n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        from_arguments(["--config", str(file)])


def test_metrics_are_served_only_where_asked(tmp_path: Path) -> None:
    base = ["--reflect", f"--backend={SERVICE}=localhost:50051"]
    assert from_arguments(base).metrics_port == 0, "no endpoint by default: edges may share a machine"
    found = from_arguments([*base, "--metrics-listen=127.0.0.1:9470"])
    assert (found.metrics_host, found.metrics_port) == ("127.0.0.1", 9470)
    file = tmp_path / "gateway.toml"
    file.write_text('reflect = true\nmetrics_listen = "[::1]:9471"\n[default_backend]\naddress = "a:1"\n')
    from_file = from_arguments([f"--config={file}"])
    assert (from_file.metrics_host, from_file.metrics_port) == ("::1", 9471)
    overridden = from_arguments([f"--config={file}", "--metrics-listen=:9472"])
    assert (overridden.metrics_host, overridden.metrics_port) == ("0.0.0.0", 9472)


def test_client_spans_and_the_public_endpoint_come_from_flags_or_the_file(tmp_path: Path) -> None:
    base = ["--reflect", f"--backend={SERVICE}=localhost:50051"]
    found = from_arguments(base)
    assert (found.client_spans, found.public_endpoint) == (False, False), "off, as otelhttp's"
    found = from_arguments([*base, "--client-spans", "--public-endpoint"])
    assert (found.client_spans, found.public_endpoint) == (True, True)
    file = tmp_path / "gateway.toml"
    file.write_text(
        'reflect = true\nclient_spans = true\npublic_endpoint = true\n[default_backend]\naddress = "a:1"\n'
    )
    from_file = from_arguments([f"--config={file}"])
    assert (from_file.client_spans, from_file.public_endpoint) == (True, True)
    overridden = from_arguments([f"--config={file}", "--no-client-spans", "--no-public-endpoint"])
    assert (overridden.client_spans, overridden.public_endpoint) == (False, False)


def test_client_spans_and_the_public_endpoint_must_be_true_or_false(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        'reflect = true\nclient_spans = "yes"\npublic_endpoint = 1\n[default_backend]\naddress = "a:1"\n'
    )
    problems = _problems_of(file)
    assert "client_spans: expected true or false, got 'yes'" in problems
    assert "public_endpoint: expected true or false, got 1" in problems


@pytest.mark.parametrize("flag", ["--public-endpoint=yes", "--client-spans=1"])
def test_the_switch_flags_take_no_value(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        from_arguments(["--reflect", f"--backend={SERVICE}=a:1", flag])
    assert raised.value.code == 2
    assert "ignored explicit argument" in capsys.readouterr().err


def test_https_and_http2_come_from_flags_or_the_file(tmp_path: Path, pem: dict[str, Path]) -> None:
    base = ["--reflect", f"--backend={SERVICE}=localhost:50051"]
    found = from_arguments(base)
    assert found.serving_tls is None and found.http2, "plain HTTP, HTTP/2 on"
    found = from_arguments([*base, f"--tls-cert={pem['cert']}", f"--tls-key={pem['key']}", "--no-http2"])
    assert found.serving_tls == CertificateFiles(pem["cert"], pem["key"]) and not found.http2
    file = tmp_path / "gateway.toml"
    file.write_text(
        f'reflect = true\nhttp2 = false\n[https]\ncert = "{pem["cert"]}"\nkey = "{pem["key"]}"\n'
        '[default_backend]\naddress = "a:1"\n'
    )
    from_file = from_arguments([f"--config={file}"])
    assert from_file.serving_tls == CertificateFiles(pem["cert"], pem["key"]) and not from_file.http2
    assert from_arguments([f"--config={file}", "--http2"]).http2


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (["--tls-cert={cert}"], "--tls-cert and --tls-key: give both"),
        (["--tls-key={key}"], "--tls-cert and --tls-key: give both"),
        (
            ["--tls-cert={cert}", "--tls-key=/nonexistent/edge.key"],
            "--tls-key /nonexistent/edge.key cannot be read",
        ),
    ],
    ids=["cert-alone", "key-alone", "unreadable-key"],
)
def test_half_a_serving_certificate_is_a_problem(
    flags: list[str], problem: str, pem: dict[str, Path]
) -> None:
    argv = [
        "--reflect",
        f"--backend={SERVICE}=a:1",
        *(f.format(cert=pem["cert"], key=pem["key"]) for f in flags),
    ]
    with pytest.raises(ConfigError) as raised:
        from_arguments(argv)
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_the_https_table_knows_only_cert_and_key(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text(
        'reflect = true\nhttp2 = "yes"\n[https]\npassword = "x"\n[default_backend]\naddress = "a:1"\n'
    )
    problems = _problems_of(file)
    assert "https: unknown keys password (use cert, key)" in problems
    assert "http2: expected true or false, got 'yes'" in problems


def test_a_standalone_edge_takes_no_stream_ticket_setting(tmp_path: Path) -> None:
    """It has no key set to check tokens with, and tickets are issued only for checked ones."""
    assert from_arguments(["--reflect", f"--backend={SERVICE}=a:1"]).limits.stream_ticket_seconds == 30.0
    file = tmp_path / "gateway.toml"
    file.write_text(
        'reflect = true\n[limits]\nstream_ticket_seconds = 10\n[default_backend]\naddress = "a:1"\n'
    )
    assert "limits.stream_ticket_seconds: a standalone edge issues no stream tickets" in _problems_of(file)


def test_the_https_table_takes_file_names(tmp_path: Path) -> None:
    file = tmp_path / "gateway.toml"
    file.write_text('reflect = true\n[https]\ncert = 5\nkey = ""\n[default_backend]\naddress = "a:1"\n')
    problems = _problems_of(file)
    assert "https.cert: expected a file name, got 5" in problems
    assert "https.key: expected a file name, got ''" in problems
