"""Installing a certificate's files where a server reads them, atomically, with a rollback.

Pure standard library: the local push target and the gateway agent both use it.

For each file: a temporary file in the same directory, created with O_EXCL and the final
mode from the start (a key is never readable by others, not even for a moment), written
and fsynced, chowned when an owner is given; the current file is kept as
`<name>.previous` (a hard link, so the current file never disappears), then the
temporary file replaces it and the directory is fsynced. Then the reload command runs
(/bin/sh -c, with a timeout). When it fails, every file is put back as it was, the
reload runs once more for the old files, and InstallFailed says so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from certbroker.domain.errors import CertbrokerError
from certbroker.domain.targets import FileSpec, InstallResult

OUTPUT_TAIL = 2000  # characters of the reload's output kept


class InstallFailed(CertbrokerError):
    """Installing failed; `result` says what was put back and what the reload said."""

    def __init__(self, message: str, result: InstallResult) -> None:
        super().__init__(message)
        self.result = result


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _ids(owner: str) -> tuple[int, int]:
    import grp
    import pwd

    user, _, group = owner.partition(":")
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError:
        raise CertbrokerError(f"owner {owner!r}: there is no user {user!r} here") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError:
            raise CertbrokerError(f"owner {owner!r}: there is no group {group!r} here") from None
    return entry.pw_uid, gid


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Installed:
    spec: FileSpec
    had_previous: bool  # a file was there before (kept as .previous)


def _write_one(spec: FileSpec) -> _Installed:
    path = spec.path
    directory = path.parent
    if not directory.is_dir():
        raise CertbrokerError(f"cannot install {path}: the directory {directory} does not exist")
    uid_gid = _ids(spec.owner) if spec.owner else None
    if uid_gid is not None and os.geteuid() != 0:
        current = (os.geteuid(), os.getegid())
        if uid_gid[0] != current[0] or uid_gid[1] not in (current[1], *os.getgroups()):
            raise CertbrokerError(
                f"cannot give {path} to {spec.owner}: only root may change a file's owner; "
                "run the installer as root, or drop the owner"
            )
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, spec.mode & 0o7777)
    try:
        try:
            os.fchmod(fd, spec.mode & 0o7777)  # the umask may have taken bits away
            view = memoryview(spec.content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            if uid_gid is not None:
                os.fchown(fd, *uid_gid)
        finally:
            os.close(fd)
        had_previous = path.exists()
        if had_previous:
            previous = previous_path(path)
            with contextlib.suppress(FileNotFoundError):
                previous.unlink()
            os.link(path, previous)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)
    return _Installed(spec, had_previous)


def _undo(done: Sequence[_Installed]) -> list[str]:
    """Put back what `done` replaced; what had no previous file goes. Problems as notes."""
    notes = []
    for item in reversed(done):
        path = item.spec.path
        try:
            if item.had_previous:
                # The .previous link stays: it is the file now in place, once more.
                previous = previous_path(path)
                tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.restore")
                os.link(previous, tmp)
                os.replace(tmp, path)
            else:
                path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except OSError as exc:
            notes.append(f"could not put back {path}: {exc}")
    return notes


def run_reload(command: str, timeout: float) -> tuple[int | None, str]:
    """(exit status or None on timeout, the last OUTPUT_TAIL characters of its output)."""
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.output or b""
        text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
        return None, (text + f"\n[timed out after {timeout:g} s]")[-OUTPUT_TAIL:]
    return proc.returncode, proc.stdout.decode(errors="replace")[-OUTPUT_TAIL:]


def install_files(
    files: Sequence[FileSpec], reload: str | None, timeout: float = 120.0
) -> InstallResult:
    """Install `files`, then run `reload`. On any failure, the files as they were are put
    back (and reloaded, when the reload failed), and InstallFailed is raised."""
    done: list[_Installed] = []
    paths = [spec.path for spec in files]
    try:
        for spec in files:
            done.append(_write_one(spec))
    except (OSError, CertbrokerError) as exc:
        notes = _undo(done)
        result = InstallResult(paths, None, "; ".join(notes), rolled_back=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        # A failed write (a full disk) names no file; the file being written is the one.
        failed = exc.filename if isinstance(exc, OSError) and exc.filename else None
        if failed is None and isinstance(exc, OSError) and len(done) < len(files):
            failed = files[len(done)].path
        where = f" ({failed})" if failed else ""
        raise InstallFailed(
            f"writing the files failed: {reason}{where}; the old files are in place"
            + (f" ({'; '.join(notes)})" if notes else ""),
            result,
        ) from None
    if not reload:
        return InstallResult(paths, None, "", rolled_back=False)
    status, tail = run_reload(reload, timeout)
    if status == 0:
        return InstallResult(paths, status, tail, rolled_back=False)
    notes = _undo(done)
    again, _ = run_reload(reload, timeout)
    if again != 0:
        notes.append(f"the reload with the old files failed too ({_status(again)})")
    result = InstallResult(paths, status, tail, rolled_back=True)
    raise InstallFailed(
        f"the reload command {_status(status)}; the old files are back in place"
        + (f" ({'; '.join(notes)})" if notes else "")
        + (f": {_last_line(tail)}" if tail.strip() else ""),
        result,
    )


def _status(status: int | None) -> str:
    return "timed out" if status is None else f"exited {status}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
