"""The atomic installer (deploy/files.py) on real files: modes from the first moment, the
previous file kept, a failing reload rolled back (and the old files reloaded), a reload
that hangs, a failure half-way; and the pause between tries of a failed deployment."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.deploy.files import InstallFailed, install_files
from certbroker.domain.errors import UsageError
from certbroker.domain.targets import FileSpec, deploy_retry_delay, parse_host_port, parse_ssh_host


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(directory: Path, version: str) -> list[FileSpec]:
    return [
        FileSpec(directory / "fullchain.pem", f"CERT {version}\n".encode(), 0o644),
        FileSpec(directory / "privkey.pem", f"KEY {version}\n".encode(), 0o600),
    ]


def test_files_land_with_their_modes_and_the_reload_sees_them(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)  # a strict umask must not take the certificate's bits
    try:
        result = install_files(
            _files(tmp_path, "1"), f"cat {tmp_path}/privkey.pem > {tmp_path}/seen; echo ok"
        )
    finally:
        os.umask(old_umask)
    assert (tmp_path / "fullchain.pem").read_text() == "CERT 1\n"
    assert _mode(tmp_path / "fullchain.pem") == 0o644
    assert _mode(tmp_path / "privkey.pem") == 0o600
    assert (tmp_path / "seen").read_text() == "KEY 1\n"
    assert result.reload_status == 0 and result.output_tail == "ok\n"
    assert not result.rolled_back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fullchain.pem", "privkey.pem", "seen"]


def test_the_previous_file_is_kept(tmp_path: Path) -> None:
    install_files(_files(tmp_path, "1"), None)
    install_files(_files(tmp_path, "2"), None)
    assert (tmp_path / "privkey.pem").read_text() == "KEY 2\n"
    assert (tmp_path / "privkey.pem.previous").read_text() == "KEY 1\n"
    assert _mode(tmp_path / "privkey.pem.previous") == 0o600


def test_a_failing_reload_puts_the_old_files_back_and_reloads_them(tmp_path: Path) -> None:
    install_files(_files(tmp_path, "1"), None)
    log = tmp_path / "reloads"
    fail_on_new = (
        f"cat {tmp_path}/fullchain.pem >> {log}; grep -q 'CERT 2' {tmp_path}/fullchain.pem "
        "&& { echo 'bad config' >&2; exit 3; }; exit 0"
    )
    extra = FileSpec(tmp_path / "combined.pem", b"NEW ONLY", 0o600)
    with pytest.raises(InstallFailed) as caught:
        install_files([*_files(tmp_path, "2"), extra], fail_on_new)
    assert caught.value.result.rolled_back
    assert caught.value.result.reload_status == 3
    assert "exited 3" in str(caught.value) and "bad config" in str(caught.value)
    assert (tmp_path / "fullchain.pem").read_text() == "CERT 1\n"
    assert (tmp_path / "privkey.pem").read_text() == "KEY 1\n"
    assert not (tmp_path / "combined.pem").exists()  # it had no previous file
    assert log.read_text() == "CERT 2\nCERT 1\n"  # the old files were reloaded


def test_a_reload_that_hangs_is_stopped_and_rolled_back(tmp_path: Path) -> None:
    install_files(_files(tmp_path, "1"), None)
    hang_on_new = f"grep -q 'CERT 2' {tmp_path}/fullchain.pem && sleep 30; exit 0"
    with pytest.raises(InstallFailed) as caught:
        install_files(_files(tmp_path, "2"), hang_on_new, timeout=0.5)
    assert "timed out" in str(caught.value)
    assert caught.value.result.reload_status is None
    assert (tmp_path / "fullchain.pem").read_text() == "CERT 1\n"


def test_a_failure_half_way_leaves_the_old_files(tmp_path: Path) -> None:
    install_files(_files(tmp_path, "1"), None)
    broken = [*_files(tmp_path, "2"), FileSpec(tmp_path / "gone" / "x.pem", b"x", 0o644)]
    with pytest.raises(InstallFailed) as caught:
        install_files(broken, "touch reloaded")
    assert "gone" in str(caught.value)
    assert (tmp_path / "fullchain.pem").read_text() == "CERT 1\n"
    assert (tmp_path / "privkey.pem").read_text() == "KEY 1\n"
    assert not list(tmp_path.glob(".*.tmp"))
    assert not (tmp_path / "reloaded").exists()


def test_a_crash_while_writing_leaves_the_old_files(tmp_path: Path) -> None:
    """A process killed during the install: what is in place is whole, never half."""
    import subprocess
    import sys

    install_files(_files(tmp_path, "1"), None)
    big = "x" * 20_000_000
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from certbroker.deploy.files import FileSpec, install_files\n"
        f"d = Path({str(tmp_path)!r})\n"
        "import threading, signal\n"
        "threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()\n"
        f"install_files([FileSpec(d / 'privkey.pem', b'K' * {len(big)}, 0o600)] * 20, None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    assert (tmp_path / "fullchain.pem").read_text() == "CERT 1\n"
    key = (tmp_path / "privkey.pem").read_bytes()
    assert key in (b"KEY 1\n", b"K" * len(big))  # the old one or the whole new one


def test_an_owner_other_than_ourselves_needs_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        result = install_files([FileSpec(tmp_path / "k.pem", b"k", 0o640, "nobody")], None)
        assert (tmp_path / "k.pem").stat().st_uid != 0 and not result.rolled_back
        return
    with pytest.raises(InstallFailed, match="only root"):
        install_files([FileSpec(tmp_path / "k.pem", b"k", 0o640, "root")], None)
    assert not (tmp_path / "k.pem").exists()


def test_retry_pauses_double_from_30_seconds_up_to_an_hour() -> None:
    def exact(n: int) -> timedelta:
        return deploy_retry_delay(n, rand=lambda: 0.0)

    assert [exact(n) for n in (1, 2, 3, 4)] == [
        timedelta(seconds=30),
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
    ]
    assert exact(8) == timedelta(hours=1) and exact(500) == timedelta(hours=1)
    assert deploy_retry_delay(1, rand=lambda: 1.0) == timedelta(seconds=27)  # jitter: shorter


def test_hosts_are_parsed_or_refused_with_the_reason() -> None:
    host = parse_ssh_host("deploy@Web1.example.com:2222")
    assert (host.user, host.host, host.port) == ("deploy", "web1.example.com", 2222)
    assert parse_ssh_host("root@[::1]:22").host == "::1"
    assert parse_host_port("web1.example.com:443") == ("web1.example.com", 443)
    for bad in ("web1.example.com", "@web1", "deploy@web1:0", "deploy@web1:http", "a b@c"):
        with pytest.raises(UsageError, match="--ssh"):
            parse_ssh_host(bad)
    with pytest.raises(UsageError, match="--verify 'web1' is not host:port"):
        parse_host_port("web1")
