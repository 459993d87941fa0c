"""Lookups for DNS-01: CNAME delegation, the zone's authoritative servers, and the check
that every TXT value is visible at them before the CA is asked to look (no fixed sleep).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from certbroker.domain.dns import Server, show_server
from certbroker.domain.errors import TransientError

log = logging.getLogger("certbroker.challenges")

MAX_CNAMES = 8
QUERY_TIMEOUT = 2.0


@dataclass(frozen=True)
class Lacking:
    server: Server
    name: str
    value: str
    answer: str  # what the server said instead


class DnsLookups:
    """Resolution through `resolvers` (the system's when empty) and direct questions to
    authoritative servers."""

    def __init__(
        self,
        resolvers: Sequence[Server] = (),
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.resolvers = tuple(resolvers)
        self.sleep = sleep
        self._resolver: dns.resolver.Resolver | None = None

    def resolver(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            if self.resolvers:
                res = dns.resolver.Resolver(configure=False)
                res.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self.resolvers
                ]
            else:
                res = dns.resolver.Resolver()
            res.lifetime = 10.0
            self._resolver = res
        return self._resolver

    def _where(self) -> str:
        if self.resolvers:
            return "the resolvers " + ", ".join(show_server(s) for s in self.resolvers)
        return "the system's resolvers"

    def cname_target(self, name: str) -> str:
        """Where the records for `name` really go: the end of its CNAME chain (the
        acme-dns pattern), or `name` itself."""
        seen = [name]
        current = name
        for _ in range(MAX_CNAMES):
            try:
                answer = self.resolver().resolve(current, "CNAME", raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return current
            except (dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
                raise TransientError(
                    f"cannot look up {current} (CNAME) through {self._where()}: {exc}; set "
                    "CERTBROKER_DNS_RESOLVERS to resolvers that answer"
                ) from None
            if answer.rrset is None:
                return current
            target = answer.rrset[0].target.to_text(omit_final_dot=True).lower()
            log.info("%s is a CNAME to %s; the TXT record goes there", current, target)
            if target in seen:
                raise TransientError(f"the CNAMEs from {name} loop: {' -> '.join(seen)}")
            seen.append(target)
            current = target
        raise TransientError(f"more than {MAX_CNAMES} CNAMEs from {name}: {' -> '.join(seen)}")

    def authoritative_servers(self, name: str) -> tuple[Server, ...]:
        """The addresses of the NS of the zone `name` is in, found through the resolvers
        (the zone cut by its SOA, then the NS names, then their addresses)."""
        res = self.resolver()
        try:
            zone = dns.resolver.zone_for_name(name, resolver=res)
            ns_names = [r.target for r in res.resolve(zone, "NS")]
        except dns.exception.DNSException as exc:
            raise TransientError(
                f"cannot find the authoritative servers of {name} through {self._where()}: "
                f"{exc}; set CERTBROKER_DNS_CHECK_SERVERS to the servers to check"
            ) from None
        servers: list[Server] = []
        for ns in ns_names:
            # IPv4 where the server has it: many hosts have no IPv6 route, and a server
            # that cannot be asked would only look like one that lags.
            for rtype in ("A", "AAAA"):
                try:
                    answer = res.resolve(ns, rtype, raise_on_no_answer=False)
                except dns.exception.DNSException:
                    continue
                if answer.rrset is not None:
                    servers.extend((r.address, 53) for r in answer.rrset)
                    break
        if not servers:
            raise TransientError(
                f"the name servers of zone {zone} ({', '.join(str(n) for n in ns_names)}) have "
                "no address; set CERTBROKER_DNS_CHECK_SERVERS to the servers to check"
            )
        return tuple(dict.fromkeys(servers))

    def txt_at(self, server: Server, name: str) -> tuple[set[str], str]:
        """The TXT values one server itself holds for `name`, and its answer in words."""
        query = dns.message.make_query(name, dns.rdatatype.TXT)
        query.flags &= ~dns.flags.RD  # the server's own data, not what it may have cached
        host, port = server
        try:
            response = dns.query.udp(query, host, port=port, timeout=QUERY_TIMEOUT)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, host, port=port, timeout=QUERY_TIMEOUT)
        except dns.exception.Timeout:
            return set(), "no answer"
        except (OSError, dns.exception.DNSException) as exc:
            return set(), f"error: {exc}"
        values = {
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        }
        rcode = dns.rcode.to_text(response.rcode())
        said = (
            rcode if rcode != "NOERROR" else (f"{len(values)} TXT value(s)" if values else "no TXT")
        )
        return values, said

    def wait_visible(
        self,
        checks: Sequence[tuple[Server, str, str]],
        timeout: float,
        between: Callable[[], None] = lambda: None,
    ) -> float:
        """Ask each (server, name, value) until every value is there; the seconds it took.
        On timeout: TransientError naming a server that lacks a record. `between` runs
        before each pause (an order keeps its lease with it)."""
        pending = list(dict.fromkeys(checks))
        started = time.monotonic()
        delay = 0.05
        while True:
            lacking: list[Lacking] = []
            answers: dict[tuple[Server, str], tuple[set[str], str]] = {}
            for server, name, value in pending:
                key = (server, name)
                if key not in answers:
                    answers[key] = self.txt_at(server, name)
                values, said = answers[key]
                if value not in values:
                    lacking.append(Lacking(server, name, value, said))
            elapsed = time.monotonic() - started
            if not lacking:
                return elapsed
            pending = [(x.server, x.name, x.value) for x in lacking]
            if elapsed >= timeout:
                first = lacking[0]
                servers = sorted({show_server(x.server) for x in lacking})
                raise TransientError(
                    f"the TXT record {first.name} = {first.value!r} is not visible at "
                    f"{show_server(first.server)} after {elapsed:.0f} s "
                    f"(it answers: {first.answer}); "
                    f"lagging: {', '.join(servers)}. The CA would not see it either: check that "
                    "the DNS account writes to this zone's primary and that its secondaries "
                    "are notified, or raise CERTBROKER_DNS_PROPAGATION_TIMEOUT"
                )
            between()
            self.sleep(min(delay, max(0.0, timeout - elapsed)))
            delay = min(delay * 1.5, 2.0)
