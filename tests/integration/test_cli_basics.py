"""The CLI's own surface: help, version, configuration display."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Cli


def test_config_show_masks_secrets_and_names_sources(offline_cli: Cli, tmp_path: Path) -> None:
    conf = tmp_path / "broker.toml"
    conf.write_text('workers = 3\nmaster_key = "Zm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyZm9vYmFyMTI="\n')
    shown = offline_cli.json(
        "--config",
        str(conf),
        "config",
        "show",
        env={"CERTBROKER_DATABASE_URL": "postgresql+psycopg://u:pa55word@db/cb"},
    )
    assert shown["workers"] == {"value": "3", "source": f"file {conf}"}
    assert shown["master_key"]["value"] == "********"
    assert "pa55word" not in shown["database_url"]["value"]
    assert shown["database_url"]["source"] == "env CERTBROKER_DATABASE_URL"
    assert shown["data_dir"]["source"] == "env CERTBROKER_DATA_DIR"
    cores = len(os.sched_getaffinity(0))
    assert shown["worker_processes"] == {
        "value": f"0 (one per CPU core: {cores})",
        "source": "default",
    }
    text = offline_cli("--config", str(conf), "config", "show").stdout
    assert "Zm9vYmFy" not in text and "********" in text


def test_help_and_version(offline_cli: Cli) -> None:
    for args in (
        ["--help"],
        ["cert", "--help"],
        ["account", "register", "--help"],
        ["cert", "request", "--help"],
        ["cert", "export", "--help"],
    ):
        assert offline_cli(*args).stdout.strip()
    assert offline_cli("--version").stdout.startswith("certbroker ")
    assert "--agree-tos" in offline_cli("account", "register", "--help").stdout
