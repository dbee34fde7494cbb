"""Config errors name the file, the key path and what was expected; check-config exits non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

from .conftest import ROOT

PROVIDER = '[providers.p]\ndialect = "openai"\nbase_url = "http://127.0.0.1:1/v1"\n'
ROUTE = '[routes.r]\narms = [{ name = "a", provider = "p", model = "m", weight = 100 }]\n'


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ or {})
    assert all(p.startswith(f"{path}: ") for p in raised.value.problems)
    return raised.value.problems


def test_default_config_is_valid_without_any_api_key() -> None:
    config = load_config(DEFAULT_CONFIG_PATH, {})
    assert config.mock is not None
    assert all(p.api_key is None for p in config.providers.values())


def test_the_default_configs_mock_records_nothing() -> None:
    config = load_config(DEFAULT_CONFIG_PATH, {})
    assert config.mock is not None and config.mock.record_requests is False


def test_server_max_event_bytes_defaults_to_16_mib_and_is_read_with_a_floor(tmp_path: Path) -> None:
    assert load_config(DEFAULT_CONFIG_PATH, {}).server.max_event_bytes == 16 * 1024 * 1024
    path = tmp_path / "events.toml"
    path.write_text("[server]\nmax_event_bytes = 1048576\n" + PROVIDER + ROUTE)
    assert load_config(path, {}).server.max_event_bytes == 1048576
    [problem] = problems(tmp_path, "[server]\nmax_event_bytes = 100\n" + PROVIDER + ROUTE)
    assert problem.endswith("server.max_event_bytes: expected an integer >= 1024, got 100")


def test_mock_record_requests_is_read_as_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "mock.toml"
    path.write_text(PROVIDER + ROUTE + "[mock]\nrecord_requests = true\n")
    config = load_config(path, {})
    assert config.mock is not None and config.mock.record_requests is True
    [problem] = problems(tmp_path, PROVIDER + ROUTE + '[mock]\nrecord_requests = "yes"\n')
    assert "mock.record_requests: expected true or false, got str 'yes'" in problem


def test_examples_are_valid_when_their_keys_are_set() -> None:
    examples = sorted((ROOT / "config" / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        env = {name: "test-key" for name in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DEEPSEEK_API_KEY",
                                             "VENDOR_API_KEY", "GATEWAY_ADMIN_KEY")}
        config = load_config(path, env)
        assert config.mock is None and config.routes


def test_unknown_key_is_reported_with_its_path(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, PROVIDER + 'colour = "red"\n' + ROUTE)
    assert problem.endswith("providers.p.colour: unknown key")


def test_bad_type_names_what_was_expected(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, PROVIDER + "max_connections = \"ten\"\n" + ROUTE)
    assert "providers.p.max_connections: expected an integer, got str 'ten'" in problem


def test_missing_api_key_env_var_is_reported_without_any_value(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, PROVIDER + 'api_key_env = "MY_KEY"\n' + ROUTE)
    assert "providers.p.api_key_env: environment variable MY_KEY is not set" in problem


def test_api_key_is_read_from_the_named_env_var_and_never_printed(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(PROVIDER + 'api_key_env = "MY_KEY"\n' + ROUTE)
    config = load_config(path, {"MY_KEY": "sk-very-secret-value"})
    assert config.providers["p"].api_key == "sk-very-secret-value"
    assert "sk-very-secret-value" not in repr(config)


def test_unknown_provider_in_a_route_is_reported(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, PROVIDER + ROUTE.replace('provider = "p"', 'provider = "q"'))
    assert "routes.r.arms[0].provider: unknown provider 'q' (known: p)" in problem


def test_weights_must_sum_to_100_or_10000(tmp_path: Path) -> None:
    text = PROVIDER + '[routes.r]\narms = [{ name = "a", provider = "p", model = "m", weight = 60 },' \
                      ' { name = "b", provider = "p", model = "m", weight = 30 }]\n'
    [problem] = problems(tmp_path, text)
    assert "routes.r.arms: weights must sum to 100 (percent) or 10000 (basis points), got 90" in problem


def test_duplicate_arm_names_are_rejected(tmp_path: Path) -> None:
    text = PROVIDER + '[routes.r]\narms = [{ name = "a", provider = "p", model = "m", weight = 50 },' \
                      ' { name = "a", provider = "p", model = "m", weight = 50 }]\n'
    [problem] = problems(tmp_path, text)
    assert "routes.r.arms[1].name: duplicate arm name 'a'" in problem


def test_bad_dialect_and_url_are_both_reported(tmp_path: Path) -> None:
    text = '[providers.p]\ndialect = "cohere"\nbase_url = "ftp://x"\n' + ROUTE
    found = problems(tmp_path, text)
    assert any("providers.p.dialect: expected one of openai, anthropic, got 'cohere'" in p for p in found)
    assert any("providers.p.base_url: expected an http:// or https:// URL" in p for p in found)


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, "[server\n")
    assert "not valid TOML" in problem


def test_negative_timeout_is_rejected(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, PROVIDER + "timeouts = { idle_s = -1 }\n" + ROUTE)
    assert "providers.p.timeouts.idle_s: expected a number greater than 0" in problem


def test_the_edge_and_drain_keys_are_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("[server]\nread_timeout_s = 5\nkeepalive_s = 90\nmax_connections = 500\nmax_streams = 50\n"
                    "max_header_count = 40\nmax_header_line_bytes = 4096\ndrain_delay_s = 0\ndrain_timeout_s = 45\n"
                    + PROVIDER + ROUTE)
    s = load_config(path, {}).server
    assert (s.read_timeout_s, s.keepalive_s, s.max_connections, s.max_streams, s.max_header_count,
            s.max_header_line_bytes, s.drain_delay_s, s.drain_timeout_s) == (5, 90, 500, 50, 40, 4096, 0, 45)


def test_edge_and_drain_keys_out_of_range_are_each_reported_with_their_path(tmp_path: Path) -> None:
    found = problems(tmp_path, "[server]\nread_timeout_s = 0\nmax_connections = 0\nmax_streams = -1\n"
                               "max_header_line_bytes = 10\ndrain_delay_s = -1\ndrain_timeout_s = \"soon\"\n"
                     + PROVIDER + ROUTE)
    for expected in ("server.read_timeout_s: expected a number greater than 0",
                     "server.max_connections: expected an integer >= 1, got 0",
                     "server.max_streams: expected an integer >= 1, got -1",
                     "server.max_header_line_bytes: expected an integer >= 256, got 10",
                     "server.drain_delay_s: expected a number >= 0, got -1.0",
                     "server.drain_timeout_s: expected a number, got str 'soon'"):
        assert any(expected in problem for problem in found), (expected, found)
    assert len(found) == 6


def check_config(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env)


def test_check_config_exits_zero_on_the_default() -> None:
    result = check_config()
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_exits_one_and_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[providers.p]\ndialect = "cohere"\nbase_url = "http://x"\nextra = 1\n' + ROUTE)
    result = check_config(str(path))
    assert result.returncode == 1
    assert "providers.p.dialect" in result.stderr and "providers.p.extra: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reports_a_missing_file(tmp_path: Path) -> None:
    result = check_config(str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert "file not found" in result.stderr


def test_cors_default_is_same_origin_only() -> None:
    assert load_config(DEFAULT_CONFIG_PATH, {}).server.cors_origins == ()


def test_cors_origin_with_a_path_is_reported(tmp_path: Path) -> None:
    # "https://app.example.com/" never equals a browser's Origin header: refused in silence otherwise.
    [problem] = problems(tmp_path, '[server]\ncors_origins = ["https://app.example.com/"]\n' + PROVIDER + ROUTE)
    assert "server.cors_origins: expected \"*\" or origins like" in problem
    assert "'https://app.example.com/'" in problem


def test_cors_origins_accept_star_and_origins_with_ports(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[server]\ncors_origins = ["*", "http://127.0.0.1:5173"]\n' + PROVIDER + ROUTE)
    assert load_config(path, {}).server.cors_origins == ("*", "http://127.0.0.1:5173")


def test_trusted_proxies_default_to_nobody() -> None:
    assert load_config(DEFAULT_CONFIG_PATH, {}).server.trusted_proxies == ()


def test_trusted_proxies_take_addresses_and_networks(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[server]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1"]\n' + PROVIDER + ROUTE)
    assert load_config(path, {}).server.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")


def test_a_trusted_proxy_that_is_not_an_address_is_reported(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, '[server]\ntrusted_proxies = ["nginx.internal"]\n' + PROVIDER + ROUTE)
    assert "server.trusted_proxies: expected IP addresses or CIDR networks, got 'nginx.internal'" in problem


def test_resume_keys_default_to_a_30_s_window_and_4_mib_per_stream() -> None:
    resume = load_config(DEFAULT_CONFIG_PATH, {}).resume
    assert (resume.enabled, resume.window_s, resume.max_bytes_per_stream) == (None, 30.0, 4 * 1024 * 1024)


def test_resume_keys_out_of_range_are_each_reported_with_their_path(tmp_path: Path) -> None:
    found = problems(tmp_path, PROVIDER + ROUTE + '[resume]\nenabled = "yes"\nwindow_s = 0\n'
                                                  'max_bytes_per_stream = 10\nwindow = 3\n')
    assert [p.split(": ", 1)[1] for p in found] == [
        "resume.enabled: expected true or false, got str 'yes'",
        "resume.window_s: expected a number greater than 0, got 0.0",
        "resume.max_bytes_per_stream: expected an integer >= 1024, got 10",
        "resume.window: unknown key",
    ]


@pytest.mark.parametrize(("enabled", "workers", "redis", "active", "problem"), [
    (None, 1, False, True, False),  # the embedded default: in this process
    (None, 4, False, False, False),  # off: a resume could land on another worker
    (None, 4, True, True, False),
    (True, 4, False, False, True),  # asked for, and impossible: refused at startup
    (False, 1, False, False, False),
])
def test_resumable_streams_run_where_a_resume_can_reach_the_stream(enabled: bool | None, workers: int, redis: bool,
                                                                  active: bool, problem: bool) -> None:
    from gateway.config import Resume

    resume = Resume(enabled=enabled)
    assert resume.active(workers=workers, redis=redis) is active
    assert (resume.problem(workers=workers, redis=redis) is not None) is problem


HEDGED = (PROVIDER + '[routes.r]\narms = [{ name = "a", provider = "p", model = "m", weight = 100 }]\n'
          'fallback = [{ provider = "p", model = "m2" }]\n')


def test_a_route_hedge_reads_a_fixed_delay_and_a_budget(tmp_path: Path) -> None:
    path = tmp_path / "hedge.toml"
    path.write_text(HEDGED + "hedge = { after_ms = 500, budget_percent = 10 }\n")
    hedge = load_config(path, {}).routes["r"].hedge
    assert hedge is not None and hedge.after_ms == 500 and hedge.budget_percent == 10


def test_a_route_hedge_after_p95_is_adaptive(tmp_path: Path) -> None:
    path = tmp_path / "hedge.toml"
    path.write_text(HEDGED + 'hedge = { after_ms = "p95", budget_percent = 5, floor_ms = 150 }\n')
    hedge = load_config(path, {}).routes["r"].hedge
    assert hedge is not None and hedge.after_ms is None and hedge.floor_ms == 150


def test_a_hedge_needs_a_fallback_and_a_delay(tmp_path: Path) -> None:
    found = problems(tmp_path, PROVIDER + ROUTE + 'hedge = { after_ms = "p99" }\n')
    assert any(p.endswith('routes.r.hedge.after_ms: expected a number of milliseconds greater than 0, or "p95", '
                          "got 'p99'") for p in found)
    assert any(p.endswith("routes.r.hedge: a hedge starts the next candidate of the fallback list, and it is empty")
               for p in found)


def test_a_route_guard_reads_its_confidence(tmp_path: Path) -> None:
    path = tmp_path / "guard.toml"
    path.write_text(ROUTE.replace("[routes.r]", "[routes.r]\nguard = { confidence = 0.95 }") + PROVIDER)
    guard = load_config(path, {}).routes["r"].guard
    assert guard is not None and guard.confidence == 0.95
    [problem] = problems(tmp_path, ROUTE.replace("[routes.r]", "[routes.r]\nguard = { confidence = 1.5 }")
                         + PROVIDER)
    assert problem.endswith("routes.r.guard.confidence: expected a number in [0.5, 1), got 1.5")


def test_the_admin_key_comes_from_the_named_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "admin.toml"
    path.write_text(PROVIDER + ROUTE + '[admin]\nkey_env = "GW_ADMIN"\n')
    config = load_config(path, {"GW_ADMIN": "adm-secret"})
    assert config.admin.key == "adm-secret" and "adm-secret" in config.secrets()
    [problem] = problems(tmp_path, PROVIDER + ROUTE + '[admin]\nkey_env = "GW_ADMIN"\n')
    assert problem.endswith("admin.key_env: environment variable GW_ADMIN is not set (it should hold the admin key)")


def test_without_an_admin_table_the_admin_api_is_off() -> None:
    assert load_config(DEFAULT_CONFIG_PATH, {}).admin.key is None
