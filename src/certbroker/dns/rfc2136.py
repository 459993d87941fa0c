"""RFC 2136 dynamic updates signed with TSIG (BIND, PowerDNS, Knot, Windows DNS), via dnspython.

dns-lexicon's own `ddns` provider always talks to port 53 and needs an IP literal, so
certbroker speaks RFC 2136 itself: any host and port, the zone found by asking the
server when it is not configured.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
from collections.abc import Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from certbroker.domain.dns import TSIG_ALGORITHMS, zone_of
from certbroker.domain.errors import PermanentError, TransientError, UsageError

log = logging.getLogger("certbroker.challenges")

TIMEOUT = 10.0
TTL = 60

_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}


def parse_server(text: str) -> tuple[str, int]:
    """'HOST[:PORT]' or '[IPv6]:PORT' -> (host, port); port 53 by default."""
    value = text.strip()
    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = _port(port_text, text)
    if not host:
        raise UsageError(f"DNS server {text!r} names no host; give HOST or HOST:PORT")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"DNS server {whole!r} has no valid port; give HOST or HOST:PORT")
    return int(text)


def check_tsig(key_name: str, secret: str, algorithm: str) -> None:
    """Refuse a TSIG setting that cannot work, before anything is stored."""
    if algorithm not in _ALGORITHMS:
        raise UsageError(
            f"--tsig-algorithm {algorithm!r} is not supported; choose one of "
            + ", ".join(TSIG_ALGORITHMS)
        )
    try:
        dns.name.from_text(key_name)
    except dns.exception.DNSException:
        raise UsageError(f"--tsig-key-name {key_name!r} is not a valid key name") from None
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(
            "--tsig-secret is not base64; give the secret exactly as `tsig-keygen` prints it"
        ) from None
    if len(raw) < 16:
        raise UsageError("--tsig-secret is shorter than 16 bytes; generate one with tsig-keygen")


class Rfc2136Provider:
    """Writes TXT records with TSIG-signed dynamic updates to one primary server."""

    def __init__(
        self,
        account: str,
        server: str,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-sha256",
        zones: Sequence[str] = (),
        ttl: int = TTL,
    ) -> None:
        self.account = account
        self.host, self.port = parse_server(server)
        self.key_name = key_name
        self.zones = tuple(zones)
        self.ttl = ttl
        self._key = dns.tsig.Key(key_name, secret, _ALGORITHMS[algorithm])
        self._address: str | None = None

    def __repr__(self) -> str:
        return f"Rfc2136Provider({self.account!r}, {self.host}:{self.port})"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def address(self) -> str:
        if self._address is None:
            try:
                infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise TransientError(
                    f"DNS account {self.account!r}: cannot resolve its server {self.host!r} "
                    f"({exc.strerror}); check --server"
                ) from None
            self._address = str(infos[0][4][0])
        return self._address

    def check_servers(self) -> tuple[tuple[str, int], ...]:
        return ((self.address(), self.port),)

    def add_txt(self, name: str, value: str) -> None:
        zone = self._zone_for(name)
        update = dns.update.UpdateMessage(zone, keyring=self._key)
        update.add(dns.name.from_text(name), self.ttl, "TXT", _quoted(value))
        self._send(update, f"add the TXT record {name}")

    def remove_txt(self, name: str, value: str) -> None:
        zone = self._zone_for(name)
        update = dns.update.UpdateMessage(zone, keyring=self._key)
        update.delete(dns.name.from_text(name), "TXT", _quoted(value))
        self._send(update, f"remove the TXT record {name}")

    def _zone_for(self, name: str) -> str:
        """The account's zone `name` is in, or the one the server says (the owner of the
        SOA it answers with)."""
        zone = zone_of(name, self.zones)
        if zone is not None:
            return zone
        query = dns.message.make_query(name, dns.rdatatype.SOA)
        query.flags &= ~dns.flags.RD
        response = self._exchange(query, f"find the zone of {name}")
        for rrset in (*response.answer, *response.authority):
            if rrset.rdtype == dns.rdatatype.SOA:
                zone = rrset.name.to_text(omit_final_dot=True)
                log.debug("DNS account %s: %s is in zone %s", self.account, name, zone)
                return zone
        raise PermanentError(
            f"DNS account {self.account!r}: the server {self.where} is not authoritative for "
            f"{name} (it answered {dns.rcode.to_text(response.rcode())} without a zone); set "
            "the zone with --zone, or point --server at the zone's primary"
        )

    def _exchange(self, message: dns.message.Message, doing: str) -> dns.message.Message:
        try:
            return dns.query.tcp(message, self.address(), port=self.port, timeout=TIMEOUT)
        except dns.tsig.PeerBadKey:
            raise PermanentError(
                f"DNS account {self.account!r}: the server {self.where} does not know the TSIG "
                f"key {self.key_name!r} (BADKEY); check --tsig-key-name"
            ) from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise PermanentError(
                f"DNS account {self.account!r}: the server {self.where} rejected the TSIG "
                f"signature of key {self.key_name!r} (BADSIG); check --tsig-secret and "
                "--tsig-algorithm"
            ) from None
        except (dns.tsig.PeerBadTime, dns.tsig.PeerBadTruncation):
            raise PermanentError(
                f"DNS account {self.account!r}: the server {self.where} rejected the TSIG "
                "signature's time (BADTIME); check this machine's clock"
            ) from None
        except dns.exception.Timeout:
            raise TransientError(
                f"DNS account {self.account!r}: the server {self.where} did not answer within "
                f"{TIMEOUT:.0f} s when asked to {doing}"
            ) from None
        except OSError as exc:
            raise TransientError(
                f"DNS account {self.account!r}: cannot reach the server {self.where} to "
                f"{doing}: {exc.strerror or exc}"
            ) from None
        except dns.exception.DNSException as exc:
            raise PermanentError(
                f"DNS account {self.account!r}: the server {self.where} answered something "
                f"unusable when asked to {doing}: {exc}"
            ) from None

    def _send(self, update: dns.update.UpdateMessage, doing: str) -> None:
        response = self._exchange(update, doing)
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            log.debug("DNS account %s: %s: done", self.account, doing)
            return
        text = dns.rcode.to_text(rcode)
        hints = {
            dns.rcode.REFUSED: "the key may not update this name; check the server's "
            "update-policy or allow-update for the key and the zone",
            dns.rcode.NOTAUTH: "the server is not the primary of that zone, or rejected the "
            "key; check --server, --zone and the TSIG settings",
            dns.rcode.NOTZONE: "the name is not in the zone; check --zone",
            dns.rcode.SERVFAIL: "the server failed; see its log",
        }
        hint = hints.get(rcode, "see the server's log")
        error = TransientError if rcode == dns.rcode.SERVFAIL else PermanentError
        raise error(
            f"DNS account {self.account!r}: the server {self.where} answered {text} when asked "
            f"to {doing}: {hint}"
        )


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
