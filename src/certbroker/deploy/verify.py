"""After a deployment: does the server serve the new certificate?"""

from __future__ import annotations

import hashlib
import socket
import ssl

from certbroker.domain.targets import DeployFailed


def served_fingerprint(host: str, port: int, server_name: str, timeout: float = 5.0) -> str:
    """SHA-256 (hex) of the leaf certificate `host:port` presents for `server_name`. The
    chain is not validated: only which certificate is served matters here."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sni = None if server_name.startswith("*.") else server_name
            with context.wrap_socket(raw, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DeployFailed(f"--verify {host}:{port}: no TLS there ({reason})") from None
    if not der:
        raise DeployFailed(f"--verify {host}:{port}: the server presented no certificate")
    return hashlib.sha256(der).hexdigest()
