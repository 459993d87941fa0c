"""Push targets: where a certificate's files go after every issuance and renewal.

A target is a directory on this machine (`local`) or on one or more hosts reached over
SSH (`ssh`), the files it wants there (names, owner, modes) and the command that makes
the server read them. A deployment is one certificate (one serial) to one target; a
failed one is tried again with a growing pause until it succeeds or a person acts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from certbroker.domain.errors import CertbrokerError, UsageError

SSH = "ssh"
LOCAL = "local"
TARGET_KINDS = (SSH, LOCAL)

DEFAULT_CERT_FILE = "fullchain.pem"
DEFAULT_KEY_FILE = "privkey.pem"
DEFAULT_KEY_MODE = 0o600
DEFAULT_CERT_MODE = 0o644

_TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}$")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:]+)$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,120}$")
_OWNER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}(:[A-Za-z0-9._][A-Za-z0-9._-]{0,31})?$")


class DeploymentState(StrEnum):
    QUEUED = "queued"  # waiting for a worker (or `deploy --wait`)
    RUNNING = "running"  # a worker holds its lease
    DONE = "done"
    FAILED = "failed"  # tried again at next_try_at, until it succeeds or a person acts
    CANCELLED = "cancelled"  # a person cancelled it, or a newer serial replaced it

    @property
    def open(self) -> bool:
        return self in (DeploymentState.QUEUED, DeploymentState.RUNNING, DeploymentState.FAILED)


OPEN_DEPLOYMENT_STATES = tuple(s.value for s in DeploymentState if s.open)


@dataclass(frozen=True)
class SshHost:
    user: str
    host: str
    port: int = 22

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" + (f":{self.port}" if self.port != 22 else "")


@dataclass(frozen=True)
class TargetFiles:
    """Which files a target wants, by name in its directory, and their modes and owner."""

    cert_file: str = DEFAULT_CERT_FILE  # the leaf and its chain
    key_file: str | None = DEFAULT_KEY_FILE
    combined_file: str | None = None  # key, leaf and chain in one (HAProxy)
    pkcs12_file: str | None = None
    owner: str | None = None  # "user" or "user:group"
    key_mode: int = DEFAULT_KEY_MODE
    cert_mode: int = DEFAULT_CERT_MODE

    def names(self) -> list[str]:
        found = [self.cert_file, self.key_file, self.combined_file, self.pkcs12_file]
        return [n for n in found if n]

    def to_json(self) -> dict[str, Any]:
        return {
            "cert_file": self.cert_file,
            "key_file": self.key_file,
            "combined_file": self.combined_file,
            "pkcs12_file": self.pkcs12_file,
            "owner": self.owner,
            "key_mode": f"{self.key_mode:04o}",
            "cert_mode": f"{self.cert_mode:04o}",
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetFiles:
        return cls(
            cert_file=data.get("cert_file") or DEFAULT_CERT_FILE,
            key_file=data.get("key_file"),
            combined_file=data.get("combined_file"),
            pkcs12_file=data.get("pkcs12_file"),
            owner=data.get("owner"),
            key_mode=int(data.get("key_mode", "0600"), 8),
            cert_mode=int(data.get("cert_mode", "0644"), 8),
        )


@dataclass(frozen=True)
class Target:
    id: int
    name: str
    kind: str  # SSH or LOCAL
    path: str  # the directory the files go into (on each host, for SSH)
    files: TargetFiles
    reload: str | None
    verify: tuple[str, int] | None  # host, port: a TLS server that must serve the new one
    hosts: tuple[SshHost, ...] = ()
    enabled: bool = True
    has_identity: bool = False
    has_pkcs12_password: bool = False
    known_hosts: str | None = None  # the known_hosts lines (public keys, kept in clear)
    created_at: datetime | None = None

    def where(self) -> str:
        if self.kind == LOCAL:
            return self.path
        return ", ".join(f"{h}:{self.path}" for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "hosts": [str(h) for h in self.hosts],
            "path": self.path,
            "files": self.files.to_json(),
            "reload": self.reload,
            "verify": f"{self.verify[0]}:{self.verify[1]}" if self.verify else None,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class Deployment:
    id: int
    certificate_id: int
    target_id: int
    serial: str
    state: DeploymentState
    attempts: int
    next_try_at: datetime | None
    last_error: str | None
    output_tail: str | None
    created_at: datetime
    finished_at: datetime | None
    alarm_since: datetime | None
    lease_owner: str | None = None
    target_name: str = field(default="")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "certificate_id": self.certificate_id,
            "target": self.target_name,
            "serial": self.serial,
            "state": self.state.value,
            "attempts": self.attempts,
            "next_try_at": self.next_try_at.isoformat() if self.next_try_at else None,
            "last_error": self.last_error,
            "output_tail": self.output_tail,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "alarm_since": self.alarm_since.isoformat() if self.alarm_since else None,
        }


# -- parsing what people type ---------------------------------------------------------------


def check_target_name(name: str) -> str:
    if not _TARGET_NAME.match(name):
        raise UsageError(
            f"target name {name!r} is not usable: use letters, digits, '.', '_' and '-' "
            "(up to 63, starting with a letter or digit)"
        )
    return name


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"{what}: {text!r} is no port number (1 to 65535)")
    return int(text)


def _split_host_port(text: str, what: str, example: str) -> tuple[str, str | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise UsageError(f"{what} {text!r} is not {example}")
        return host, rest[1:] if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def parse_ssh_host(text: str) -> SshHost:
    """`user@host[:port]` (an IPv6 address in brackets: user@[::1]:2222)."""
    example = "user@host or user@host:port (e.g. deploy@web1.example.com:2222)"
    user, at, rest = text.strip().rpartition("@")
    if not at or not user or not rest:
        raise UsageError(f"--ssh {text!r} is not {example}")
    if not _USER.match(user):
        raise UsageError(f"--ssh {text!r}: {user!r} is not a user name")
    host, port = _split_host_port(rest, "--ssh", example)
    if not host or not _HOST.match(host):
        raise UsageError(f"--ssh {text!r}: {host!r} is not a host name or address")
    return SshHost(user, host.lower(), _port(port, f"--ssh {text!r}") if port else 22)


def parse_host_port(text: str, option: str = "--verify") -> tuple[str, int]:
    """`host:port` (an IPv6 address in brackets: [::1]:443)."""
    example = "host:port (e.g. web1.example.com:443)"
    host, port = _split_host_port(text.strip(), option, example)
    if not host or not _HOST.match(host) or port is None:
        raise UsageError(f"{option} {text!r} is not {example}")
    return host.lower(), _port(port, f"{option} {text!r}")


def check_file_name(name: str, option: str) -> str:
    if not _FILE_NAME.match(name) or name.endswith(".previous") or name.endswith(".tmp"):
        raise UsageError(
            f"{option} {name!r} is not a file name: give a plain name (letters, digits, "
            "'.', '_', '-'; no '/'), the directory is --path"
        )
    return name


def check_owner(owner: str) -> str:
    if not _OWNER.match(owner):
        raise UsageError(f"--owner {owner!r} is not user or user:group")
    return owner


def check_mode(text: str, option: str) -> int:
    if not re.fullmatch(r"0?[0-7]{3}", text):
        raise UsageError(f"{option} {text!r} is not a file mode in octal (e.g. 0640)")
    return int(text, 8)


# -- when a failed deployment is tried again ------------------------------------------------

DEPLOY_RETRY_FIRST = timedelta(seconds=30)
DEPLOY_RETRY_CEILING = timedelta(hours=1)
DEPLOY_JITTER = 0.1  # a pause is up to this much shorter, so retries spread out


def deploy_retry_delay(
    failures: int,
    *,
    first: timedelta = DEPLOY_RETRY_FIRST,
    ceiling: timedelta = DEPLOY_RETRY_CEILING,
    rand: Callable[[], float] = random.random,
) -> timedelta:
    """The pause after the `failures`-th failure in a row (1, 2, …): 30 s, 1 min, 2, 4 …
    doubling up to an hour; up to 10 % shorter at random."""
    steps = max(0, failures - 1)
    pause = first * (2 ** min(steps, 30)) if first < ceiling else ceiling
    pause = min(pause, ceiling)
    return pause * (1 - DEPLOY_JITTER * rand())


class DeployFailed(CertbrokerError):
    """A push target could not be reached, refused us, or serves another certificate."""


@dataclass(frozen=True)
class FileSpec:
    """One file to install: where, what, its mode, and its owner ("user" or "user:group";
    None: whoever installs it)."""

    path: Path
    content: bytes
    mode: int
    owner: str | None = None


@dataclass(frozen=True)
class InstallResult:
    paths: list[Path]
    reload_status: int | None  # None: no reload command, or it did not finish
    output_tail: str
    rolled_back: bool
