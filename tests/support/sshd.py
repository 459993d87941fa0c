"""Debian's OpenSSH server on loopback, for the push-target tests: run as the current user
(root or not) on a free port, with its own host key and authorized_keys under one
directory, in the foreground; waited for and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tests.support.ports import free_port, wait_for_tcp
from tests.support.processes import log_tail, require_binary, spawn, terminate


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    host_public_key: str  # "ssh-ed25519 AAAA…"
    identity: Path  # a private key the server lets in (OpenSSH format, 0600)
    work: Path

    @property
    def login(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_public_key}\n"

    def log(self) -> str:
        return (self.work / "sshd.log").read_text(errors="replace")

    def let_in(self, other: Sshd) -> None:
        """Also let in whoever logs in to `other` (its identity)."""
        with (self.work / "authorized_keys").open("a") as keys:
            keys.write("\n" + (other.work / "authorized_keys").read_text())


def _key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(path))
    path.chmod(0o600)
    return key


@contextlib.contextmanager
def run_sshd(work: Path) -> Iterator[Sshd]:
    binary = require_binary("sshd", "openssh-server", "push-target")
    work.mkdir(parents=True, exist_ok=True)
    host_key = _key(work / "host_ed25519")
    client_key = _key(work / "id_ed25519")
    (work / "authorized_keys").write_text(client_key.export_public_key().decode())
    if os.geteuid() == 0:  # as root, sshd insists on its privilege-separation directory
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {work / 'host_ed25519'}",
                f"PidFile {work / 'sshd.pid'}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                "UsePAM no",
                "StrictModes no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log = work / "sshd.log"
    proc: subprocess.Popen[bytes] | None = spawn([binary, "-D", "-e", "-f", str(config)], log)
    try:
        try:
            wait_for_tcp("127.0.0.1", port, timeout=30)
        except TimeoutError:
            raise RuntimeError(f"sshd did not start:\n{log_tail(log)}") from None
        yield Sshd(
            port=port,
            user=pwd.getpwuid(os.geteuid()).pw_name,
            host_public_key=host_key.export_public_key().decode().strip(),
            identity=work / "id_ed25519",
            work=work,
        )
    finally:
        terminate(proc)
        proc = None
