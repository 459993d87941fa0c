"""Configuration precedence: TOML file < CERTBROKER_* environment < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from certbroker.config import load_settings
from certbroker.domain.errors import ConfigError


def test_defaults_put_sqlite_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.http01_port == 80
    assert settings.listen == "127.0.0.1:8080"
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'var' / 'certbroker.db'}"


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('http01_port = 8081\nworkers = 3\nlisten = "0.0.0.0:9000"\n')
    env = {"CERTBROKER_HTTP01_PORT": "8082", "CERTBROKER_WORKERS": "5"}
    settings = load_settings(conf, env, {"workers": 7, "data_dir": None})
    assert settings.listen == "0.0.0.0:9000"
    assert settings.http01_port == 8082
    assert settings.workers == 7
    shown = settings.masked()
    assert shown["listen"][1].startswith("file")
    assert shown["http01_port"][1] == "env CERTBROKER_HTTP01_PORT"
    assert shown["workers"][1] == "flag"


def test_default_file_is_read_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "certbroker.toml").write_text("workers = 2\n")
    assert load_settings(environ={}).workers == 2


def test_secrets_are_masked(tmp_path: Path) -> None:
    env = {
        "CERTBROKER_MASTER_KEY": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=",
        "CERTBROKER_DATABASE_URL": "postgresql+psycopg://broker:hunter2@db.example:5432/cb",
    }
    shown = load_settings(None, env).masked()
    assert shown["master_key"][0] == "********"
    assert "hunter2" not in shown["database_url"][0]
    assert "broker:********@db.example:5432" in shown["database_url"][0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense = 1\n", "unknown setting 'nonsense'"),
        ('http01_port = "eighty"\n', "http01_port must be int"),
        ("http01_port = 70000\n", "not a TCP port"),
        ('listen = "8080"\n', "HOST:PORT"),
        ('log_level = "loud"\n', "log_level 'loud'"),
        ("workers = 0\n", "at least 1"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_configuration_is_named(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(conf, {})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", {})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CERTBROKER_HTTP01_PORT"):
        load_settings(None, {"CERTBROKER_HTTP01_PORT": "x"})


def test_the_master_key_stays_out_of_the_settings_repr() -> None:
    """Settings travel to worker processes and could end up in a log line or traceback."""
    secret = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
    settings = load_settings(environ={"CERTBROKER_MASTER_KEY": secret})
    assert settings.master_key == secret
    assert secret not in repr(settings) and secret not in str(settings)


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"CERTBROKER_LISTEN": "127.0.0.1:8080"}, False),
        ({"CERTBROKER_LISTEN": "127.0.0.5:8080"}, False),
        ({"CERTBROKER_LISTEN": "[::1]:8080"}, False),
        ({"CERTBROKER_LISTEN": "localhost:8080"}, False),
        ({"CERTBROKER_LISTEN": "0.0.0.0:8080"}, True),
        ({"CERTBROKER_LISTEN": "192.0.2.10:8080"}, True),
        ({"CERTBROKER_LISTEN": "broker.example.com:8080"}, True),
        ({"CERTBROKER_LISTEN": "0.0.0.0:8080", "CERTBROKER_METRICS_TOKEN": "s3cret"}, False),
        ({"CERTBROKER_LISTEN": "0.0.0.0:8080", "CERTBROKER_METRICS_PUBLIC": "true"}, False),
        ({"CERTBROKER_LISTEN": "0.0.0.0:8080", "CERTBROKER_METRICS_PUBLIC": "0"}, True),
    ],
)
def test_metrics_without_a_token_stay_on_loopback_unless_made_public(
    tmp_path: Path, env: dict[str, str], refused: bool
) -> None:
    """Issue 24, finding 9: /metrics names every certificate; `serve` refuses to offer it
    to other machines without a token unless told to."""
    settings = load_settings(environ={"CERTBROKER_DATA_DIR": str(tmp_path), **env})
    refusal = settings.metrics_refusal()
    assert (refusal is not None) is refused
    if refused:
        assert "metrics_token" in refusal and "metrics_public" in refusal


def test_a_flag_setting_takes_true_or_false_only(tmp_path: Path) -> None:
    env = {"CERTBROKER_DATA_DIR": str(tmp_path), "CERTBROKER_METRICS_PUBLIC": "maybe"}
    with pytest.raises(ConfigError, match="metrics_public must be bool"):
        load_settings(environ=env)


def test_the_per_client_limits_have_defaults_and_must_be_positive(tmp_path: Path) -> None:
    """Issue 24, finding 6: what one client's token may make the broker spend."""
    settings = load_settings(environ={"CERTBROKER_DATA_DIR": str(tmp_path)})
    assert settings.client_zone_certificates == 100
    assert settings.client_connections == 10
    assert settings.client_pending_requests == 100
    assert settings.client_approval_requests == 20
    env = {"CERTBROKER_DATA_DIR": str(tmp_path), "CERTBROKER_CLIENT_ZONE_CERTIFICATES": "2"}
    assert load_settings(environ=env).client_zone_certificates == 2
    for name in (
        "client_zone_certificates",
        "client_connections",
        "client_pending_requests",
        "client_approval_requests",
    ):
        variable = "CERTBROKER_" + name.upper()
        with pytest.raises(ConfigError, match=f"env {variable}: {name} must be at least 1, not 0"):
            load_settings(environ={"CERTBROKER_DATA_DIR": str(tmp_path), variable: "0"})
