"""Small networking helpers for tests: free loopback ports and waiting for listeners."""

from __future__ import annotations

import random
import socket
import time

__all__ = ["free_port", "free_udp_tcp_port", "wait_for_tcp"]


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = handle.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Ports come from below the kernel's ephemeral range: a port handed out by binding to
    port 0 is an ephemeral one, and any outgoing connection (to Pebble, say) may take it
    as its source port before the test's server binds it.
    """
    low, _ = _ephemeral_range()
    start = 10000 if low > 11000 else 1024
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(start, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def free_udp_tcp_port(attempts: int = 50) -> int:
    """Return a port on 127.0.0.1 that is free for both TCP and UDP (e.g. for DNS)."""
    for _ in range(attempts):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
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
