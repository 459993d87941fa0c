"""Writing a certificate (and its key) to disk in the formats servers and tools expect.

Every file is written atomically (temporary file, fsync, rename) so a server that
reloads at the wrong moment never reads half a file, and files holding a private key
are 0600 from the moment they exist, so the key is never readable by others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certbroker.crypto.keys import PrivateKey, key_matches_certificate, load_private_key
from certbroker.domain.errors import CertbrokerError, NoSpace, UsageError
from certbroker.domain.keys import ExportFormat

KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


@dataclass(frozen=True)
class ExportBundle:
    """What there is to export: the leaf, its intermediates and (maybe) the key."""

    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes | None
    alias: str


@dataclass(frozen=True)
class _Parsed:
    leaf: x509.Certificate
    chain: list[x509.Certificate]
    key: PrivateKey | None


def _parse(bundle: ExportBundle) -> _Parsed:
    try:
        certs = x509.load_pem_x509_certificates(bundle.cert_pem)
    except ValueError:
        raise UsageError("the certificate to export is not a PEM certificate") from None
    if len(certs) != 1:
        raise UsageError(
            f"the certificate to export holds {len(certs)} certificates; expected the leaf only"
        )
    chain: list[x509.Certificate] = []
    if bundle.chain_pem.strip():
        try:
            chain = x509.load_pem_x509_certificates(bundle.chain_pem)
        except ValueError:
            raise UsageError("the chain to export is not a list of PEM certificates") from None
    key = None
    if bundle.key_pem is not None:
        key = load_private_key(bundle.key_pem, source="the certificate's private key")
        # A mismatched pair would export fine and fail at TLS handshake time; stop here.
        if not key_matches_certificate(key, certs[0]):
            raise UsageError("the private key does not match the certificate to export")
    return _Parsed(leaf=certs[0], chain=chain, key=key)


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def render_export(
    bundle: ExportBundle, fmt: ExportFormat, password: str | None = None
) -> list[tuple[str, bytes, int]]:
    """`bundle` as `fmt`: each file's name, content and mode (one file, or certbot's
    live/ layout for pem). Raises UsageError when the format needs a key or password
    that is missing."""
    parsed = _parse(bundle)
    if fmt.needs_key and parsed.key is None:
        raise UsageError(
            f"{fmt.value} export needs the private key, and certbroker holds none for this "
            "certificate (it was issued for an outside CSR); use pem, fullchain or der"
        )
    if fmt.needs_password and not password:
        raise UsageError(f"{fmt.value} export needs --password")
    # Keystore tools show and select entries by alias; an empty one is hard to address.
    alias = bundle.alias.strip() or "certbroker"
    leaf_and_chain = _pem([parsed.leaf, *parsed.chain])
    if fmt is ExportFormat.PEM:
        files = [
            ("cert.pem", _pem([parsed.leaf]), PUBLIC_MODE),
            ("chain.pem", _pem(parsed.chain), PUBLIC_MODE),
            ("fullchain.pem", leaf_and_chain, PUBLIC_MODE),
        ]
        if parsed.key is not None:
            files.append(("privkey.pem", _key_pem(parsed.key), KEY_MODE))
        return files
    if fmt is ExportFormat.FULLCHAIN:
        return [("fullchain.pem", leaf_and_chain, PUBLIC_MODE)]
    if fmt is ExportFormat.DER:
        return [("cert.der", parsed.leaf.public_bytes(serialization.Encoding.DER), PUBLIC_MODE)]
    key = parsed.key
    assert key is not None  # checked above through fmt.needs_key
    if fmt is ExportFormat.COMBINED:
        return [("combined.pem", _key_pem(key) + leaf_and_chain, KEY_MODE)]
    assert password
    if fmt is ExportFormat.PKCS12:
        return [("certificate.p12", _pkcs12(parsed, key, alias, password), KEY_MODE)]
    return [("keystore.jks", _jks(parsed, key, alias, password), KEY_MODE)]


def write_export(
    bundle: ExportBundle, fmt: ExportFormat, out: Path, password: str | None = None
) -> list[Path]:
    """Write `bundle` as `fmt` to `out` (a directory for pem, a file otherwise).

    Returns the files written. Raises UsageError, leaving nothing new behind, when the
    format needs a key or password that is missing or `out` cannot be written; NoSpace
    (exit 1: nothing about the request is wrong) when its disk is full, the files there
    before left as they were.
    """
    rendered = render_export(bundle, fmt, password)
    if fmt is ExportFormat.PEM:
        return _write_pem_dir(rendered, out)
    _check_file_target(out)
    return _write_files([(out, data, mode) for _, data, mode in rendered])


def _pkcs12(parsed: _Parsed, key: PrivateKey, alias: str, password: str) -> bytes:
    return pkcs12.serialize_key_and_certificates(
        name=alias.encode(),
        key=key,
        cert=parsed.leaf,
        cas=parsed.chain or None,
        encryption_algorithm=serialization.BestAvailableEncryption(password.encode()),
    )


def _jks(parsed: _Parsed, key: PrivateKey, alias: str, password: str) -> bytes:
    import jks  # pyjks (and pyasn1 under it) is slow to import and rarely needed

    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    certs = [c.public_bytes(serialization.Encoding.DER) for c in [parsed.leaf, *parsed.chain]]
    # Java lowercases JKS aliases when it stores them; do the same so keytool and
    # `-alias` lookups agree with what we wrote.
    entry = jks.PrivateKeyEntry.new(alias.lower(), certs, key_der, "pkcs8")
    store = jks.KeyStore.new("jks", [entry])
    # saves() encrypts the unencrypted key entry with the store password as well.
    data: bytes = store.saves(password)
    return data


def _write_pem_dir(rendered: list[tuple[str, bytes, int]], out: Path) -> list[Path]:
    """certbot's live/ layout, so existing server configs can point at it unchanged."""
    if not out.parent.is_dir():
        raise UsageError(f"cannot export to {out}: directory {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise UsageError(f"cannot export to {out}: it is a file; pem export needs a directory")
    created = False
    if not out.exists():
        try:
            out.mkdir(mode=DIR_MODE)
        except OSError as exc:
            raise UsageError(f"cannot create directory {out}: {exc.strerror}") from None
        os.chmod(out, DIR_MODE)  # mkdir's mode is cut by the umask; it is empty still
        created = True
    files = [(out / name, data, mode) for name, data, mode in rendered]
    try:
        return _write_files(files)
    except CertbrokerError:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _check_file_target(out: Path) -> None:
    if not out.parent.is_dir():
        raise UsageError(f"cannot export to {out}: directory {out.parent} does not exist")


def _write_files(files: list[tuple[Path, bytes, int]]) -> list[Path]:
    """Stage every file first, then rename them all: a failure leaves no new file."""
    # A directory in the way would only fail at rename time, after some files were
    # already replaced; find it before anything is written.
    for target, _, _ in files:
        if target.is_dir():
            raise UsageError(f"cannot export to {target}: it is a directory; give a file name")
    staged: list[tuple[Path, Path]] = []
    current = files[0][0]
    try:
        for current, data, mode in files:
            staged.append((_write_temp(current, data, mode), current))
        for tmp, current in staged:
            os.replace(tmp, current)
    except OSError as exc:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        # Name the target, not the temporary file the user never asked for.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(
                f"cannot write {current}: no space left on its disk ({exc.strerror}); the "
                "files there before are unchanged and nothing new was left; free space "
                "there and export again"
            ) from None
        raise UsageError(f"cannot write {current}: {exc.strerror or exc}") from None
    for directory in {target.parent for _, target in staged}:
        _fsync_dir(directory)
    return [target for _, target in staged]


def _write_temp(target: Path, data: bytes, mode: int) -> Path:
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never write through a file or symlink someone else put there. The mode
    # applies at creation, so a key file is never readable by others, not even empty.
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        # The umask may have cut bits from `mode`; set exactly it before any data goes in.
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    # Makes the renames durable; some filesystems cannot fsync a directory, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_private_file(out: Path, data: bytes) -> Path:
    """Write one secret (e.g. an exported account key) atomically with mode 0600."""
    _check_file_target(out)
    return _write_files([(out, data, KEY_MODE)])[0]
