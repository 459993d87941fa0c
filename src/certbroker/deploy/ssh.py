"""The SSH push target: the files uploaded over SFTP to each host in turn, then reloaded.

Host keys are checked against the known_hosts lines given when the target was added;
an unknown or changed key is refused (never learned on first use). On each host: every
file goes to a temporary name in the directory with its mode, the current file is kept
as `<name>.previous` (a hard link), the new one is renamed over it (posix-rename), then
the reload runs; when it fails, the `.previous` files are put back and the reload runs
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as random_names
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from certbroker.deploy.files import OUTPUT_TAIL, InstallFailed
from certbroker.domain.errors import UsageError
from certbroker.domain.targets import DeployFailed, FileSpec, InstallResult, SshHost, Target
from certbroker.ports import DeploySecrets

CONNECT_TIMEOUT = 20.0


def load_identity(pem: bytes, source: str = "--identity") -> asyncssh.SSHKey:
    try:
        return asyncssh.import_private_key(pem)
    except asyncssh.KeyImportError as exc:
        reason = str(exc)
        if "passphrase" in reason.lower():
            raise UsageError(
                f"{source}: the key is encrypted with a passphrase; give a key without one "
                "(ssh-keygen -p -N '' -f KEYFILE on a copy), kept for certbroker only"
            ) from None
        raise UsageError(f"{source}: not an SSH private key ({reason})") from None


def _known_hosts(content: str) -> asyncssh.SSHKnownHosts:
    try:
        return asyncssh.import_known_hosts(content)
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise UsageError(f"--known-hosts: not a known_hosts file ({exc})") from None


def _knows(known: asyncssh.SSHKnownHosts, host: SshHost) -> bool:
    import ipaddress

    try:
        addr = str(ipaddress.ip_address(host.host))
    except ValueError:
        addr = ""
    trusted = known.match(host.host, addr, host.port)
    return bool(trusted[0] or trusted[1])


class SshDeployer:
    def __init__(self, reload_timeout: float = 120.0) -> None:
        self.reload_timeout = reload_timeout

    def check(self, target: Target, secrets: DeploySecrets) -> None:
        if not PurePosixPath(target.path).is_absolute():
            raise UsageError(f"--path {target.path!r}: give the absolute directory on the hosts")
        if secrets.identity_pem is None:
            raise UsageError("an SSH target needs --identity KEYFILE (the private key)")
        load_identity(secrets.identity_pem)
        if not secrets.known_hosts:
            raise UsageError("an SSH target needs --known-hosts FILE holding each host's key")
        known = _known_hosts(secrets.known_hosts)
        for host in target.hosts:
            if not _knows(known, host):
                where = host.host if host.port == 22 else f"[{host.host}]:{host.port}"
                raise UsageError(
                    f"--known-hosts holds no key for {where}; add its line (for example "
                    f"`ssh-keyscan -p {host.port} {host.host}`, checked against the host) "
                    "and try again"
                )

    def deploy(
        self, target: Target, files: Sequence[FileSpec], secrets: DeploySecrets
    ) -> InstallResult:
        return asyncio.run(self._deploy_all(target, files, secrets))

    async def _deploy_all(
        self, target: Target, files: Sequence[FileSpec], secrets: DeploySecrets
    ) -> InstallResult:
        assert secrets.identity_pem is not None and secrets.known_hosts is not None
        key = load_identity(secrets.identity_pem, "the target's identity")
        known = _known_hosts(secrets.known_hosts)
        tails = []
        status: int | None = None
        for host in target.hosts:
            try:
                status, tail = await self._deploy_host(host, target, files, key, known)
            except InstallFailed as exc:
                tails.append(f"[{host}]\n{exc.result.output_tail}")
                result = InstallResult(
                    exc.result.paths,
                    exc.result.reload_status,
                    "\n".join(tails)[-OUTPUT_TAIL:],
                    rolled_back=exc.result.rolled_back,
                )
                raise InstallFailed(f"{host}: {exc}", result) from None
            if tail.strip():
                tails.append(f"[{host}]\n{tail}")
        return InstallResult(
            [f.path for f in files], status, "\n".join(tails)[-OUTPUT_TAIL:], rolled_back=False
        )

    async def _deploy_host(
        self,
        host: SshHost,
        target: Target,
        files: Sequence[FileSpec],
        key: asyncssh.SSHKey,
        known: asyncssh.SSHKnownHosts,
    ) -> tuple[int | None, str]:
        try:
            conn = await asyncssh.connect(
                host.host,
                port=host.port,
                username=host.user,
                known_hosts=known,
                client_keys=[key],
                agent_path=None,
                config=[],
                password=None,
                kbdint_auth=False,
                connect_timeout=CONNECT_TIMEOUT,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise DeployFailed(
                f"{host}: the host's key is not the one in the target's known_hosts "
                f"({exc.reason}); nothing was written. If the host's key really changed, "
                "delete the target and add it again with the new key in --known-hosts FILE"
            ) from None
        except asyncssh.PermissionDenied:
            raise DeployFailed(
                f"{host}: the host refused the target's identity key; add its public key "
                f"to ~{host.user}/.ssh/authorized_keys there"
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise DeployFailed(f"cannot reach {host}: {_reason(exc)}") from None
        try:
            return await _install(conn, host, target, files, self.reload_timeout)
        finally:
            conn.close()
            await conn.wait_closed()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def _run(conn: Any, command: str, timeout: float | None = 60.0) -> tuple[int | None, str]:
    try:
        proc = await conn.run(command, check=False, timeout=timeout, stderr=asyncssh.STDOUT)
    except asyncssh.TimeoutError as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return None, (out + f"\n[timed out after {timeout:g} s]")[-OUTPUT_TAIL:]
    out = proc.stdout if isinstance(proc.stdout, str) else ""
    return proc.exit_status, out[-OUTPUT_TAIL:]


async def _install(
    conn: Any, host: SshHost, target: Target, files: Sequence[FileSpec], timeout: float
) -> tuple[int | None, str]:
    placed: list[tuple[str, bool]] = []  # (remote path, had a previous file)
    paths = [Path(f.path) for f in files]
    try:
        async with conn.start_sftp_client() as sftp:
            for spec in files:
                final = str(PurePosixPath(target.path) / spec.path.name)
                tmp = str(
                    PurePosixPath(target.path)
                    / f".{spec.path.name}.{random_names.token_hex(6)}.tmp"
                )
                attrs = asyncssh.SFTPAttrs(permissions=spec.mode & 0o7777)
                try:
                    async with sftp.open(tmp, "wb", attrs) as handle:
                        await handle.write(spec.content)
                    await sftp.chmod(tmp, spec.mode & 0o7777)
                    if spec.owner:
                        status, out = await _run(
                            conn, f"chown {shlex.quote(spec.owner)} {shlex.quote(tmp)}"
                        )
                        if status != 0:
                            raise DeployFailed(f"chown {spec.owner} {tmp}: {out.strip()}")
                    had = await sftp.exists(final)
                    if had:
                        status, out = await _run(
                            conn, f"ln -f {shlex.quote(final)} {shlex.quote(final + '.previous')}"
                        )
                        if status != 0:
                            raise DeployFailed(f"keeping {final}.previous: {out.strip()}")
                    await sftp.posix_rename(tmp, final)
                except BaseException:
                    with contextlib.suppress(OSError, asyncssh.Error):
                        await sftp.remove(tmp)
                    raise
                placed.append((final, had))
    except (OSError, asyncssh.Error, DeployFailed) as exc:
        notes = await _restore(conn, placed)
        raise InstallFailed(
            f"writing {target.path} failed ({_reason(exc)}); the old files are in place"
            + (f" ({'; '.join(notes)})" if notes else ""),
            InstallResult(paths, None, "", rolled_back=True),
        ) from None
    if not target.reload:
        return None, ""
    status, tail = await _run(conn, target.reload, timeout)
    if status == 0:
        return status, tail
    notes = await _restore(conn, placed)
    again, _ = await _run(conn, target.reload, timeout)
    if again != 0:
        notes.append("the reload with the old files failed too")
    shown = "timed out" if status is None else f"exited {status}"
    last = [line for line in tail.strip().splitlines() if line.strip()]
    raise InstallFailed(
        f"the reload command {shown}; the old files are back in place"
        + (f" ({'; '.join(notes)})" if notes else "")
        + (f": {last[-1][:300]}" if last else ""),
        InstallResult(paths, status, tail, rolled_back=True),
    )


async def _restore(conn: Any, placed: Sequence[tuple[str, bool]]) -> list[str]:
    """Each placed file back as it was: its `.previous`, or gone when it had none."""
    notes = []
    for final, had in reversed(placed):
        q = shlex.quote(final)
        if had:
            restore = shlex.quote(final + ".restore")
            command = f"ln -f {shlex.quote(final + '.previous')} {restore} && mv -f {restore} {q}"
        else:
            command = f"rm -f {q}"
        status, out = await _run(conn, command)
        if status != 0:
            notes.append(f"could not put back {final}: {out.strip()}")
    return notes
