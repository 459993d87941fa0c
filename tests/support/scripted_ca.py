"""A `CertificateAuthority` (certbroker.ports) that answers from a script, not a network.

For the branches a real CA (Pebble) cannot easily be made to take: an unknown order
status, several names failing validation at once, an order that went invalid while its
process was gone, an order the CA forgot. Unless a test says otherwise it behaves like a
well-mannered CA: a new order is pending with one authorization per name, each offering
an http-01 and a dns-01 challenge; an answered challenge is valid (or invalid, for a name
in `failing`); an order whose challenges are all answered is ready; finalize issues a
real certificate for the CSR's public key, signed by a throwaway CA key, at once.

Every call is recorded in `calls` (method and arguments) before the CA acts on it, and
each function in `listeners` sees it then: a test reads the store there to learn what
was recorded before that call, or takes the lease away, or "kills the process" by
raising `Killed`.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certbroker.domain.errors import AcmeProblem, PermanentError
from certbroker.ports import (
    AccountInfo,
    AuthorizationInfo,
    ChallengeInfo,
    OrderInfo,
    RenewalInfo,
)

BASE = "https://ca.test/acme"
CHALLENGE_TYPES = ("http-01", "dns-01")


class Killed(BaseException):
    """Raised by a listener to stand for SIGKILL: nothing in the broker catches it, so the
    store keeps exactly what was recorded before the call."""


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]


def validation_problem(detail: str = "no valid response from the responder") -> AcmeProblem:
    """What a CA puts on a challenge that failed (it names no identifier there)."""
    return AcmeProblem(
        type="urn:ietf:params:acme:error:incorrectResponse", detail=detail, status=403
    )


@dataclass
class ScriptedOrder:
    """One order as the scripted CA holds it; a test changes its fields between runs."""

    number: int
    names: tuple[str, ...]
    failing: dict[str, AcmeProblem] = field(default_factory=dict)  # fail when validated
    answered: set[str] = field(default_factory=set)  # names whose challenge was answered
    status: str | None = None  # forced: "weird", or "invalid" (expired, deactivated)
    forgotten: bool = False  # get_order fails as for an order URL the CA does not know
    certificate: str | None = None  # its URL once finalized

    @property
    def url(self) -> str:
        return f"{BASE}/order/{self.number}"

    def authz_url(self, name: str) -> str:
        return f"{BASE}/authz/{self.number}/{self.names.index(name)}"

    def token(self, name: str, kind: str = "http-01") -> str:
        return f"tok-{self.number}-{self.names.index(name)}-{kind[:4]}"

    def challenge_url(self, name: str, kind: str) -> str:
        return f"{BASE}/chall/{self.number}/{self.names.index(name)}/{kind}"

    @property
    def tokens(self) -> list[str]:
        """The http-01 tokens of every name."""
        return [self.token(name) for name in self.names]

    def validated_while_away(self) -> None:
        """The CA validated every challenge (it was answered before the process died)."""
        self.answered.update(self.names)

    def authz_status(self, name: str) -> str:
        if name not in self.answered:
            return "pending"
        return "invalid" if name in self.failing else "valid"

    def order_status(self) -> str:
        if self.status is not None:
            return self.status
        statuses = [self.authz_status(n) for n in self.names]
        if "invalid" in statuses:
            return "invalid"
        if self.certificate is not None:
            return "valid"
        return "ready" if all(s == "valid" for s in statuses) else "pending"

    def info(self) -> OrderInfo:
        return OrderInfo(
            url=self.url,
            status=self.order_status(),
            authorizations=tuple(self.authz_url(n) for n in self.names),
            finalize=f"{self.url}/finalize",
            certificate=self.certificate,
        )

    def authorization(self, name: str) -> AuthorizationInfo:
        status = self.authz_status(name)
        error = self.failing[name] if status == "invalid" else None
        return AuthorizationInfo(
            url=self.authz_url(name),
            identifier=name,
            wildcard=False,
            status=status,
            challenges=tuple(
                ChallengeInfo(
                    type=kind,
                    url=self.challenge_url(name, kind),
                    token=self.token(name, kind),
                    status=status,
                    error=error,
                )
                for kind in CHALLENGE_TYPES
            ),
        )


class ScriptedCA:
    """Implements every method of `CertificateAuthority`; see the module's docstring."""

    def __init__(self, *, renewal_info: bool = False) -> None:
        self.calls: list[Call] = []
        self.listeners: list[Callable[[Call], None]] = []
        self.orders: list[ScriptedOrder] = []
        self.next_orders: deque[dict[str, Any]] = deque()  # fields of the next new orders
        self.issued: dict[str, str] = {}  # certificate URL -> full chain PEM
        self.revoked: list[bytes] = []
        self.renewal_info_offered = renewal_info
        self.issuer_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scripted Test CA")])
        now = dt.datetime.now(dt.UTC)
        self.issuer = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.issuer_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.issuer_key, hashes.SHA256())
        )

    # -- the script ------------------------------------------------------------------------

    def _called(self, method: str, *args: Any) -> None:
        call = Call(method, args)
        self.calls.append(call)
        for listener in list(self.listeners):
            listener(call)

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def _order_at(self, url: str) -> ScriptedOrder:
        for order in self.orders:
            if order.url == url:
                return order
        raise AssertionError(f"the scripted CA never created an order at {url}")

    def _authz_at(self, url: str) -> tuple[ScriptedOrder, str]:
        for order in self.orders:
            for name in order.names:
                if order.authz_url(name) == url:
                    return order, name
        raise AssertionError(f"the scripted CA has no authorization at {url}")

    # -- accounts --------------------------------------------------------------------------

    def terms_of_service(self) -> str | None:
        self._called("terms_of_service")
        return None

    def external_account_required(self) -> bool:
        self._called("external_account_required")
        return False

    def register(
        self, emails: Sequence[str], agree_tos: bool, eab: tuple[str, str] | None
    ) -> AccountInfo:
        self._called("register", tuple(emails), agree_tos, eab)
        return AccountInfo(uri=f"{BASE}/acct/1", status="valid", contacts=tuple(emails))

    def find_account(self) -> AccountInfo:
        self._called("find_account")
        return AccountInfo(uri=f"{BASE}/acct/1", status="valid")

    def query_account(self) -> AccountInfo:
        self._called("query_account")
        return AccountInfo(uri=f"{BASE}/acct/1", status="valid")

    def update_contacts(self, emails: Sequence[str]) -> AccountInfo:
        self._called("update_contacts", tuple(emails))
        return AccountInfo(uri=f"{BASE}/acct/1", status="valid", contacts=tuple(emails))

    def deactivate(self) -> AccountInfo:
        self._called("deactivate")
        return AccountInfo(uri=f"{BASE}/acct/1", status="deactivated")

    def change_key(self, new_key_pem: bytes) -> None:
        self._called("change_key", new_key_pem)

    # -- orders ----------------------------------------------------------------------------

    def new_order(
        self, names: Sequence[str], replaces: str | None = None, profile: str | None = None
    ) -> OrderInfo:
        self._called("new_order", tuple(names), replaces, profile)
        extra = self.next_orders.popleft() if self.next_orders else {}
        order = ScriptedOrder(number=len(self.orders) + 1, names=tuple(names), **extra)
        self.orders.append(order)
        return order.info()

    def profiles(self) -> dict[str, str]:
        self._called("profiles")
        return {}

    def supports_renewal_info(self) -> bool:
        self._called("supports_renewal_info")
        return self.renewal_info_offered

    def renewal_info(self, cert_id: str) -> RenewalInfo:
        self._called("renewal_info", cert_id)
        now = dt.datetime.now(dt.UTC)
        return RenewalInfo(start=now + dt.timedelta(days=60), end=now + dt.timedelta(days=61))

    def account_orders(self) -> list[str]:
        """A CA that lists no orders (as Let's Encrypt)."""
        return []

    def get_order(self, url: str) -> OrderInfo:
        self._called("get_order", url)
        order = self._order_at(url)
        if order.forgotten:
            raise PermanentError(
                "the CA refused to show the order: malformed: No order for ID",
                AcmeProblem(
                    type="urn:ietf:params:acme:error:malformed",
                    detail="No order for ID",
                    status=404,
                ),
            )
        return order.info()

    def get_authorization(self, url: str) -> AuthorizationInfo:
        self._called("get_authorization", url)
        order, name = self._authz_at(url)
        return order.authorization(name)

    def key_authorization(self, token: str) -> str:
        self._called("key_authorization", token)
        return f"{token}.thumb"

    def answer_challenge(self, url: str) -> None:
        self._called("answer_challenge", url)
        for order in self.orders:
            for name in order.names:
                if url in (order.challenge_url(name, k) for k in CHALLENGE_TYPES):
                    order.answered.add(name)
                    return
        raise AssertionError(f"the scripted CA has no challenge at {url}")

    def finalize(self, order: OrderInfo, csr_pem: bytes) -> OrderInfo:
        self._called("finalize", order, csr_pem)
        held = self._order_at(order.url)
        if held.order_status() != "ready":
            raise PermanentError(
                f"the CA refused to finalize the order: orderNotReady: {held.order_status()}",
                AcmeProblem(type="urn:ietf:params:acme:error:orderNotReady", status=403),
            )
        csr = x509.load_pem_x509_csr(csr_pem)
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if sorted(sans.get_values_for_type(x509.DNSName)) != sorted(held.names):
            raise PermanentError(
                "the CA refused to finalize the order: badCSR: names differ",
                AcmeProblem(type="urn:ietf:params:acme:error:badCSR", status=400),
            )
        held.certificate = f"{held.url}/cert"
        self.issued[held.certificate] = self._issue(csr, held.names)
        return held.info()

    def _issue(self, csr: x509.CertificateSigningRequest, names: Sequence[str]) -> str:
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.issuer.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .add_extension(  # what an ARI certificate identifier is made of (RFC 9773)
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuer_key.public_key()),
                critical=False,
            )
            .sign(self.issuer_key, hashes.SHA256())
        )
        return (leaf.public_bytes(Encoding.PEM) + self.issuer.public_bytes(Encoding.PEM)).decode()

    def download_certificate(self, url: str) -> str:
        self._called("download_certificate", url)
        if url not in self.issued:
            raise AssertionError(f"the scripted CA issued nothing at {url}")
        return self.issued[url]

    def revoke(self, cert_pem: bytes, reason: int) -> None:
        self._called("revoke", cert_pem, reason)
        self.revoked.append(cert_pem)
