"""Small networking helpers for tests: free loopback ports and waiting for listeners."""

from __future__ import annotations

import socket
import time

__all__ = ["free_port", "free_udp_tcp_port", "wait_for_tcp"]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding to port 0 and closing the socket again, so
    another process may grab it before the caller does; callers that start
    servers should be ready to retry with a fresh port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_tcp_port(attempts: int = 50) -> int:
    """Return a port on 127.0.0.1 that is free for both TCP and UDP (e.g. for DNS)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both TCP and UDP after {attempts} attempts")


def wait_for_tcp(host: str, port: int, timeout: float) -> None:
    """Block until a TCP connection to ``host:port`` succeeds.

    Raises ``TimeoutError`` if nothing accepts a connection within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"nothing listening on {host}:{port} after {timeout:g}s (last error: {last_error})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                return
        except OSError as exc:
            last_error = exc
            time.sleep(min(0.05, max(remaining, 0)))
