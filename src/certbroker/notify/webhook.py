"""Webhooks out over HTTP (httpx): one POST per attempt, 10 s at most, redirects not
followed, and never to an address that is not public unless the webhook allows it.

Server-side request forgery (Lemur's documentation warns of it): whoever may add a
webhook could otherwise make the broker POST to the cloud's metadata service
(169.254.169.254), to a database on localhost or to anything on the internal network,
and read a part of the answer in the delivery log. So the host is resolved and every
address it resolves to is checked, when the webhook is added and again before each
send, and the connection goes to the address that was checked (the name is still sent
as Host and TLS's SNI, and the certificate is verified for the name), so a DNS answer
that changes between the check and the connection cannot slip past it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from certbroker.domain.errors import UsageError
from certbroker.domain.webhooks import RESPONSE_KEPT
from certbroker.ports import WebhookAnswer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

TIMEOUT = 10.0  # seconds for the whole attempt's connect, send and each read

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv4 addresses embedded by NAT64


def refused_address(ip: IPAddress) -> str | None:
    """What kind of address that is not public `ip` is ("loopback", "private (RFC
    1918)", …), or None for a public one. An IPv6 address that carries an IPv4 one
    (IPv4-mapped, NAT64, 6to4) is judged by the IPv4 address it carries."""
    embedded = carried(ip)
    if embedded is not None:
        return refused_address(embedded)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip in _CGNAT:
        return "shared (carrier-grade NAT, 100.64.0.0/10)"
    if any(ip in net for net in _RFC1918):
        return "private (RFC 1918)"
    if ip in _UNIQUE_LOCAL:
        return "unique-local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_reserved or ip.is_private or not ip.is_global:
        return "reserved or special-purpose"
    return None


def carried(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    embedded = ip.ipv4_mapped or ip.sixtofour
    if embedded is None and ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return embedded


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system's resolver)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


def _port(parts: Any) -> int:
    return int(parts.port or (443 if parts.scheme == "https" else 80))


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class HttpWebhookSender:
    """`ports.WebhookSender` over httpx."""

    def __init__(self, resolver: Resolver = system_resolver, timeout: float = TIMEOUT) -> None:
        self.resolver = resolver
        self.timeout = timeout

    def _addresses(self, url: str) -> list[IPAddress]:
        """Every address of the URL's host, each of them public; UsageError otherwise."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                found = self.resolver(host, _port(parts))
            except (OSError, UnicodeError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                raise UsageError(
                    f"webhook URL {url}: the host {host} cannot be resolved ({reason})"
                ) from None
            addresses = [a for a in (_literal(str(f).partition("%")[0]) for f in found) if a]
            if not addresses:
                raise UsageError(f"webhook URL {url}: the host {host} has no address")
        for address in addresses:
            kind = refused_address(address)
            if kind is not None:
                shown = str(address)
                if (inner := carried(address)) is not None:
                    shown += f" ({inner})"
                named = shown if literal is not None else f"{host}, which resolves to {shown}"
                raise UsageError(
                    f"webhook URL {url} points at {named}, a {kind} address; certbroker "
                    "does not send webhooks to loopback, private, link-local or other "
                    "non-public addresses (server-side request forgery) unless the webhook "
                    "is added with --allow-private"
                )
        return addresses

    def check(self, url: str, allow_private: bool) -> None:
        if not allow_private:
            self._addresses(url)

    def send(
        self, url: str, body: bytes, headers: Mapping[str, str], allow_private: bool
    ) -> WebhookAnswer:
        parts = urlsplit(url)
        target = url
        sent_headers = dict(headers)
        extensions: dict[str, Any] = {}
        if not allow_private:
            try:
                address = self._addresses(url)[0]
            except UsageError as exc:
                return WebhookAnswer(error=f"refused: {exc}")
            host = parts.hostname or ""
            if _literal(host) is None:
                # Connect to the address just checked; the name goes in Host and SNI, and
                # the certificate is verified for the name.
                shown = f"[{address}]" if address.version == 6 else str(address)
                netloc = f"{shown}:{parts.port}" if parts.port else shown
                target = urlunsplit(parts._replace(netloc=netloc))
                sent_headers["Host"] = f"{host}:{parts.port}" if parts.port else host
                extensions["sni_hostname"] = host
        try:
            with (
                httpx.Client(
                    timeout=self.timeout, follow_redirects=False, trust_env=False
                ) as client,
                client.stream(
                    "POST", target, content=body, headers=sent_headers, extensions=extensions
                ) as response,
            ):
                head = b""
                for chunk in response.iter_bytes():
                    head += chunk
                    if len(head) >= RESPONSE_KEPT:
                        break
                text = head[:RESPONSE_KEPT].decode("utf-8", errors="replace")
                error = None
                if response.is_redirect:
                    location = response.headers.get("location", "?")
                    error = (
                        f"answered {response.status_code} (redirect to {location}, not followed)"
                    )
                elif not response.is_success:
                    error = f"answered {response.status_code} {response.reason_phrase}".rstrip()
                return WebhookAnswer(status=response.status_code, body_head=text, error=error)
        except httpx.TimeoutException:
            return WebhookAnswer(error=f"no answer within {self.timeout:g} s")
        except httpx.ConnectError as exc:
            return WebhookAnswer(error=f"cannot connect to {parts.netloc}: {exc}")
        except httpx.HTTPError as exc:
            return WebhookAnswer(error=f"{type(exc).__name__}: {exc}")
