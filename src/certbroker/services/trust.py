"""The trust list devices fetch: the root and intermediate certificates of the CAs the
broker's certificates chain to (innovaphone's "URL for Let's Encrypt root certificates").

Intermediates come from the chains the CAs sent. A root is not in a chain: it comes from
the roots an admin gave (`PUT /api/v1/trust/roots`: a private CA's root, or Pebble's),
and from the caIssuers address in an intermediate's Authority Information Access, where
the CA publishes it (Let's Encrypt's do), fetched once and kept in the store. That
address is plain HTTP: a certificate found there is a root of the list only when it is
self-signed and its signature on the intermediate verifies. A fetch that failed is
tried again after RETRY_FAILED."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID

from certbroker.domain.errors import UsageError
from certbroker.services.common import ServiceContext, read_ca_bundle

log = logging.getLogger("certbroker.api")
ROOTS_KEY = "trust-roots"  # the roots an admin gave, PEM
FETCHED_KEY = "trust-fetched"  # caIssuers URL -> PEM ("" when it could not be had)
FAILED_KEY = "trust-fetch-failed"  # caIssuers URL -> when fetching it last failed
FETCH_TIMEOUT = 5.0
FETCH_LIMIT = 100_000  # bytes: a certificate or a PKCS#7 bundle is a few KiB
RETRY_FAILED = timedelta(hours=6)


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
        """The roots that signed the intermediates, from their caIssuers addresses,
        fetched once each (again after RETRY_FAILED when the fetch failed)."""
        known: dict[str, str] = json.loads(self.repo.get_setting(FETCHED_KEY) or "{}")
        failed: dict[str, str] = json.loads(self.repo.get_setting(FAILED_KEY) or "{}")
        now = self.ctx.clock()
        changed = False
        found: list[x509.Certificate] = []
        for cert in intermediates:
            for url in _ca_issuers(cert):
                if url not in known or _retry(failed.get(url), now):
                    known[url] = _fetch(url)
                    changed = True
                    if known[url]:
                        failed.pop(url, None)
                    else:
                        failed[url] = now.isoformat()
                found += [c for c in _certs(known[url]) if _signed(c, c) and _signed(cert, c)]
        if changed:
            self.repo.set_setting(FETCHED_KEY, json.dumps(known), now)
            self.repo.set_setting(FAILED_KEY, json.dumps(failed), now)
        return found


def _retry(failed_at: str | None, now: datetime) -> bool:
    return failed_at is not None and now - datetime.fromisoformat(failed_at) >= RETRY_FAILED


def _signed(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` signed `cert` (its name and its signature)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


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
        with requests.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False, stream=True) as answer:
            if answer.status_code != 200:  # a redirect is not followed, nor read
                log.warning("trust list: cannot fetch %s: HTTP %d", url, answer.status_code)
                return ""
            data = b""
            for chunk in answer.iter_content(16_384):
                data += chunk
                if len(data) > FETCH_LIMIT:
                    log.warning("trust list: %s holds more than %d bytes", url, FETCH_LIMIT)
                    return ""
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
