"""The trust list devices fetch: the root and intermediate certificates of the CAs the
broker's certificates chain to (innovaphone's "URL for Let's Encrypt root certificates").

Intermediates come from the chains the CAs sent. A root is not in a chain: it comes from
the roots an admin gave (`PUT /api/v1/trust/roots`: a private CA's root, or Pebble's),
and from the caIssuers address in an intermediate's Authority Information Access, where
the CA publishes it (Let's Encrypt's do), fetched once and kept in the store."""

from __future__ import annotations

import json
import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from certbroker.domain.errors import UsageError
from certbroker.services.common import ServiceContext, read_ca_bundle

log = logging.getLogger("certbroker.api")
ROOTS_KEY = "trust-roots"  # the roots an admin gave, PEM
FETCHED_KEY = "trust-fetched"  # caIssuers URL -> PEM ("" when it could not be had)
FETCH_TIMEOUT = 5.0


def _certs(pem: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem.encode()) if pem.strip() else []
    except ValueError:
        return []


def _is_self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


class TrustService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.repo = ctx.repo

    def set_roots(self, pem: str) -> list[dict[str, str]]:
        """Replace the roots an admin gives (PEM; empty: none)."""
        found = read_ca_bundle(pem.encode(), "roots") if pem.strip() else ""
        for cert in _certs(found):
            if not _is_self_signed(cert):
                raise UsageError(
                    f"roots: {cert.subject.rfc4514_string()} is not a root (its issuer is "
                    f"{cert.issuer.rfc4514_string()}); give root certificates only"
                )
        self.repo.set_setting(ROOTS_KEY, found, self.ctx.clock())
        return self.describe(_certs(found))

    def certificates(self) -> list[x509.Certificate]:
        """Roots and intermediates, once each: the roots first."""
        intermediates: dict[bytes, x509.Certificate] = {}
        for chain in self.repo.distinct_chains():
            for cert in _certs(chain):
                intermediates.setdefault(cert.fingerprint(hashes.SHA256()), cert)
        roots: dict[bytes, x509.Certificate] = {}
        for cert in _certs(self.repo.get_setting(ROOTS_KEY) or ""):
            roots.setdefault(cert.fingerprint(hashes.SHA256()), cert)
        for cert in self._fetched(list(intermediates.values())):
            roots.setdefault(cert.fingerprint(hashes.SHA256()), cert)
        for key in list(intermediates):  # a chain that ends in its root lists it once
            if key in roots or _is_self_signed(intermediates[key]):
                roots.setdefault(key, intermediates.pop(key))
        return [*roots.values(), *intermediates.values()]

    def roots_pem(self) -> str:
        return "".join(c.public_bytes(Encoding.PEM).decode() for c in self.certificates())

    @staticmethod
    def describe(certs: list[x509.Certificate]) -> list[dict[str, str]]:
        return [
            {
                "subject": c.subject.rfc4514_string(),
                "issuer": c.issuer.rfc4514_string(),
                "not_after": c.not_valid_after_utc.isoformat(),
                "sha256": c.fingerprint(hashes.SHA256()).hex(),
            }
            for c in certs
        ]

    def _fetched(self, intermediates: list[x509.Certificate]) -> list[x509.Certificate]:
        """The issuers the intermediates name in caIssuers, fetched once each."""
        known: dict[str, str] = json.loads(self.repo.get_setting(FETCHED_KEY) or "{}")
        changed = False
        found: list[x509.Certificate] = []
        for cert in intermediates:
            for url in _ca_issuers(cert):
                if url not in known:
                    known[url] = _fetch(url)
                    changed = True
                found += [c for c in _certs(known[url]) if _is_self_signed(c)]
        if changed:
            self.repo.set_setting(FETCHED_KEY, json.dumps(known), self.ctx.clock())
        return found


def _ca_issuers(cert: x509.Certificate) -> list[str]:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return []
    return [
        str(d.access_location.value)
        for d in aia
        if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
        and isinstance(d.access_location, x509.UniformResourceIdentifier)
        and str(d.access_location.value).startswith(("http://", "https://"))
    ][:4]


def _fetch(url: str) -> str:
    """The certificate at a caIssuers URL as PEM (DER, PEM or PKCS#7 there); "" when it
    cannot be had (asked again only when the store forgets it)."""
    import requests
    from cryptography.hazmat.primitives.serialization import pkcs7

    try:
        answer = requests.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False)
        answer.raise_for_status()
        data = answer.content[:100_000]
    except requests.RequestException as exc:
        log.warning("trust list: cannot fetch %s: %s", url, exc)
        return ""
    for load in (
        lambda d: [x509.load_der_x509_certificate(d)],
        x509.load_pem_x509_certificates,
        pkcs7.load_der_pkcs7_certificates,
    ):
        try:
            return "".join(c.public_bytes(Encoding.PEM).decode() for c in load(data))
        except ValueError:
            continue
    log.warning("trust list: %s holds no certificate", url)
    return ""
